"""Load a cross-encoder safely and turn (query, passage) pairs into probabilities of relevance.

Thresholds such as "drop negatives above 0.5" only mean something on a probability scale, so every
score goes through a sigmoid here, whatever activation the checkpoint's config names (many public
rerankers save `Identity` and return raw logits). Checkpoints never run code of their own.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from tripleminer.precision import compute_at

Pair = Tuple[str, str]


def load_cross_encoder(
    name_or_path: str, *, max_length: Optional[int] = None, device: Optional[str] = None
) -> CrossEncoder:
    """A single-logit CrossEncoder from a local directory or a hub id, with `trust_remote_code=False`."""
    model = CrossEncoder(
        name_or_path,
        trust_remote_code=False,
        model_kwargs={"use_safetensors": True},  # never unpickle a pytorch_model.bin
        max_length=max_length,
        device=device,
        activation_fn=torch.nn.Sigmoid(),
    )
    if model.num_labels != 1:
        raise ValueError(
            f"{name_or_path}: a relevance cross-encoder has one output logit, this one has {model.num_labels}"
        )
    return model


def score_pairs(model: CrossEncoder, pairs: Sequence[Pair], batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    """P(relevant) of each (query, passage) pair, float64 in [0, 1], in input order.

    `predict` sorts the pairs by length before batching, so pass many pairs per call: padding is
    where short max lengths lose their speed. `precision` (fp32 | bf16 | fp16, see
    `tripleminer/precision.py`) is that of the forward passes; under bf16/fp16 the model returns
    logits and the sigmoid runs in float64 here, so the probabilities are not rounded to 8 bits.
    """
    if not pairs:
        return np.zeros(0, dtype=np.float64)
    if precision == "fp32":
        scores = model.predict(
            list(pairs), batch_size=batch_size, activation_fn=torch.nn.Sigmoid(), show_progress_bar=False
        )
        return np.asarray(scores, dtype=np.float64)
    with compute_at(precision, model.device.type):
        logits = model.predict(
            list(pairs), batch_size=batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False,
            convert_to_tensor=True,
        )
    logits = logits.float().cpu().numpy().astype(np.float64).reshape(len(pairs))
    return 1.0 / (1.0 + np.exp(-logits))
