"""Compute precision of the models' forward passes: fp32, or bf16/fp16 under `torch.autocast`.

`resolve_precision(requested, device)` turns `--precision` (auto | fp32 | bf16 | fp16) into the one
the models run at:

- `auto`: bf16 on a CPU that torch reports native bf16 for (oneDNN's AVX512_BF16 / AMX kernels,
  `torch.ops.mkldnn._is_mkldnn_bf16_supported()`), on CUDA bf16 where the GPU has it natively
  (`torch.cuda.is_bf16_supported`) else fp16, fp32 anywhere else (other devices, the onnx backend).
- `bf16` asked for explicitly runs even on a CPU without native bf16 (correct, but emulated and
  slow: the model handlers warn when they load); on a GPU without bf16 it is refused (ask for fp16).
- `fp16` on a CPU is refused unless torch reports native fp16 there (AVX512_FP16 / AMX-FP16): on
  other CPUs autocast emulates it, slower than fp32, and fp16's range is narrower than bf16's.
- The onnx backend runs fp32 only: onnxruntime's CPU provider has no bf16 kernels for this graph on
  x86 and its fp16 needs a converted model, so non-fp32 requests there are refused (`auto` -> fp32).

Weights stay fp32; only the matmuls run at the reduced precision (autocast), and outputs are cast
back to float32 before they leave the model code, so stored vectors and scores are float32/float64
whatever the compute precision. No Beam import here: the encoders and the planner both use it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESOLVED = ("fp32", "bf16", "fp16")


def default_device() -> str:
    """The device sentence-transformers picks when none is given: cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def device_type(device: Optional[str]) -> str:
    """`cuda:1` -> `cuda`; None -> the type of the device the model would load on."""
    if device is None:
        return default_device()
    import torch

    return torch.device(device).type


def cpu_native(precision: str) -> bool:
    """Whether torch has native (not emulated) kernels for `precision` on this CPU."""
    import torch

    if precision == "fp32":
        return True
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # an old torch or a build without oneDNN
        return False


def cuda_bf16() -> bool:
    """Native bf16 on the current GPU (Ampere and later), not the emulation newer torch counts in."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.4 has no including_emulation (and counts no emulation)
        return bool(torch.cuda.is_bf16_supported())


def native(precision: str, device: Optional[str]) -> bool:
    """Whether `precision` runs natively (fast) on `device` here."""
    kind = device_type(device)
    if precision == "fp32":
        return True
    if kind == "cpu":
        return cpu_native(precision)
    if kind == "cuda":
        return precision == "fp16" or cuda_bf16()
    return False


def resolve_precision(requested: Optional[str], device: Optional[str], backend: str = "torch") -> str:
    """`auto` | fp32 | bf16 | fp16 (None: auto) -> fp32 | bf16 | fp16 for `device` (None: the default
    device) and the embedding `backend`; ValueError for a request this hardware or backend refuses."""
    requested = requested or "auto"
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "onnx":
        if requested in ("auto", "fp32"):
            return "fp32"
        raise ValueError(f"precision {requested}: the onnx backend runs fp32 only (onnxruntime's CPU provider has no bf16 "
                         "kernels for this model and fp16 needs a converted model); use --embed_backend torch for bf16/fp16")
    if requested == "fp32":
        return "fp32"
    kind = device_type(device)
    if kind == "cpu":
        if requested == "auto":
            return "bf16" if cpu_native("bf16") else "fp32"
        if requested == "fp16":
            if cpu_native("fp16"):
                return "fp16"
            raise ValueError("precision fp16: this CPU has no native fp16 (torch would emulate it, slower than fp32); "
                             "use bf16 or auto")
        return "bf16"  # emulated where the CPU lacks it: correct but slow (the model handlers warn where they load)
    if kind == "cuda":
        if requested == "auto":
            return "bf16" if cuda_bf16() else "fp16"
        if requested == "bf16" and not cuda_bf16():
            raise ValueError("precision bf16: this GPU has no native bf16 (it needs compute capability 8.0+); use fp16 or auto")
        return requested
    if requested == "auto":
        return "fp32"
    raise ValueError(f"precision {requested}: reduced precision is supported on cpu and cuda, not {kind}; use fp32 or auto")


def log_precision(what: str, model: str, precision: str, device_kind: str) -> None:
    """Once per worker (a model handler's load_model): the precision a model runs at, and a warning
    where this worker's hardware only emulates it (asked for explicitly, or planned on another machine)."""
    log.info("%s %s on %s: %s precision", what, model, device_kind, precision)
    if not native(precision, device_kind):
        log.warning("%s: %s is emulated on this worker's %s, correct but slow (auto would pick %s here); pass --precision "
                    "explicitly, or plan the run on hardware like the workers'", what, precision, device_kind,
                    resolve_precision("auto", device_kind))


def key_suffix(precision: str) -> str:
    """What a cache key gets for outputs computed at `precision`: nothing for fp32 (so caches written
    before precision existed stay valid), `-bf16` / `-fp16` otherwise."""
    if precision not in RESOLVED:
        raise ValueError(f"precision {precision!r} is not resolved; expected one of {', '.join(RESOLVED)}")
    return "" if precision == "fp32" else f"-{precision}"


@contextlib.contextmanager
def compute_at(precision: str, device_kind: str) -> Iterator[None]:
    """Run the forward passes inside at `precision` on a model living on `device_kind` (cpu, cuda):
    fp32 changes nothing, bf16/fp16 run under `torch.autocast` (weights stay fp32)."""
    if precision == "fp32":
        yield
        return
    import torch

    if device_kind not in ("cpu", "cuda"):
        raise ValueError(f"precision {precision} needs a cpu or cuda model, this one is on {device_kind}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device_kind, dtype=dtype):
        yield
