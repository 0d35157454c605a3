"""A queue of recent passage embeddings as extra negatives, optionally from a momentum encoder (MoCo).

A small batch then still sees thousands of negatives. Queued embeddings carry no gradient; with a
momentum passage encoder (He et al., MoCo) they drift slowly, so old and new entries stay comparable.
"""

from __future__ import annotations

import copy
from typing import List, Tuple

import torch
import torch.nn.functional as F

from tripleminer.trainer.model import DOCUMENT, DualEncoder


class EmbeddingQueue:
    """The `size` most recent (normalised) passage embeddings and their document keys, newest first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("queue size must be positive")
        self.size = size
        self.embeddings: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else len(self.keys)

    def push(self, embeddings: torch.Tensor, keys: torch.Tensor) -> None:
        embeddings = F.normalize(embeddings.detach().float(), dim=-1)
        if self.embeddings is not None:
            embeddings = torch.cat([embeddings, self.embeddings])
            keys = torch.cat([keys, self.keys])
        self.embeddings, self.keys = embeddings[: self.size], keys[: self.size]

    def contents(self) -> Tuple[torch.Tensor, torch.Tensor] | None:
        """(embeddings, keys) to score as negatives, or None while empty."""
        return None if self.keys is None else (self.embeddings, self.keys)

    def restore(self, contents: Tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Put back what `contents()` returned, unchanged (resuming a checkpoint)."""
        self.embeddings, self.keys = contents if contents is not None else (None, None)


class MomentumEncoder:
    """A frozen copy of the dual encoder, moved towards the trained one after each optimiser step."""

    def __init__(self, model: DualEncoder, momentum: float) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError("momentum must be in (0, 1)")
        self.momentum = momentum
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: DualEncoder) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta."""
        for key_param, param in zip(self.model.parameters(), model.parameters()):
            key_param.mul_(self.momentum).add_(param.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def embed(self, passages: List[str]) -> torch.Tensor:
        return self.model.embed(passages, DOCUMENT)
