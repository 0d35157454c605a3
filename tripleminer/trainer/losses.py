"""Contrastive losses over a query batch and its candidate passages.

Candidates of every query: its positive, its own hard negatives, every other positive and hard negative
of the batch, and with `cross_batch` those of every rank (RocketQA's cross-batch negatives: A ranks of
B queries give each query A*B - 1 negatives besides the hard ones), plus an optional queue of recent
passage embeddings. A candidate that is a known positive of the query (the same document, or another
judged-relevant document of the same query elsewhere in the batch) is masked out, not pushed away.

Loss scaling under DistributedDataParallel: passages are gathered with a differentiable all-gather whose
backward sums, over ranks, each rank's gradient for this rank's passages, so rank r ends with the
gradient of sum_s L_s through its own encoder pass. DDP then averages over the A ranks. With
L_r = A * (sum of rank r's per-query losses) / (queries on all ranks), the averaged gradient is the
gradient of the mean per-query loss over the global batch: the same as one process on the concatenated
batch, with no further world-size factor (and uneven last batches still weigh every query equally).

The triplet loss takes its negatives from those candidates: all of them (`all`, the mean hinge), the
query's own mined negatives (`mined`), or only the highest-scoring one (`hardest_in_batch`, Huang et
al. 2020's online hard negative), which, gathered like the InfoNCE candidates, is the hardest of every
rank's passages. A known positive is never chosen: duplicates of the query's positive carry its doc key
and are masked like any other known positive.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tripleminer.trainer.distributed import gather_rows, sum_across_ranks, world

LOSSES = ("infonce", "triplet")
LTRE = "ltre"  # the other objective, full-retrieval training (trainer.ltre), not a ContrastiveLoss kind
TRIPLET_NEGATIVES = ("all", "mined", "hardest_in_batch")


def known_positive_mask(
    query_keys: torch.Tensor,
    pair_query_keys: torch.Tensor,
    pair_doc_keys: torch.Tensor,
    candidate_keys: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """[Q, P] True where candidate j is a positive of query i (per the (query, doc) pairs) but not its target."""
    same_query = (query_keys[:, None] == pair_query_keys[None, :]).float()
    is_pair_doc = (pair_doc_keys[:, None] == candidate_keys[None, :]).float()
    mask = (same_query @ is_pair_doc) > 0
    mask[torch.arange(len(targets), device=targets.device), targets] = False
    return mask


def info_nce(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-query cross-entropy of the target among the unmasked candidates, at `temperature`."""
    logits = (scores / temperature).masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, targets, reduction="none")


def triplet_margin(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-query mean over its negatives n of max(0, margin - s(q, p+) + s(q, n))."""
    positive = scores.gather(1, targets[:, None])
    excluded = mask.clone()
    excluded[torch.arange(len(targets), device=targets.device), targets] = True
    hinge = (margin - positive + scores).clamp(min=0).masked_fill(excluded, 0.0)
    count = (~excluded).sum(dim=1).clamp(min=1)
    return hinge.sum(dim=1) / count


def hardest_negative(scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """[Q, P] True only at each query's highest-scoring candidate that is not `excluded` (none if all are)."""
    best = scores.detach().masked_fill(excluded, float("-inf")).argmax(dim=1)
    chosen = torch.zeros_like(excluded)
    chosen[torch.arange(len(best), device=best.device), best] = True
    return chosen & ~excluded


def own_passages(owners: torch.Tensor, num_queries: int, num_candidates: int, offset: int) -> torch.Tensor:
    """[Q, P] True where candidate `offset + j` is passage j of this rank's batch and belongs to query i."""
    own = torch.zeros(num_queries, num_candidates, dtype=torch.bool, device=owners.device)
    rows = torch.arange(num_queries, device=owners.device)
    own[:, offset : offset + len(owners)] = owners[None, :] == rows[:, None]
    return own


class ContrastiveLoss(nn.Module):
    """Loss of this rank's queries against all candidates (see the module docstring for the scaling)."""

    def __init__(self, kind: str = "infonce", temperature: float = 0.05, margin: float = 0.2, cross_batch: bool = True,
                 triplet_negative: str = "all"):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        if triplet_negative not in TRIPLET_NEGATIVES:
            raise ValueError(f"triplet negative must be one of {TRIPLET_NEGATIVES}, got {triplet_negative!r}")
        self.kind, self.temperature, self.margin, self.cross_batch = kind, temperature, margin, cross_batch
        self.triplet_negative = triplet_negative

    def forward(
        self,
        queries: torch.Tensor,
        passages: torch.Tensor,
        query_keys: torch.Tensor,
        passage_keys: torch.Tensor,
        queue: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        passage_owners: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """`passages[i]` is the positive of `queries[i]`; keys identify queries and documents across ranks;
        `passage_owners` (the batch's, needed by the `mined` triplet negatives) the row each passage came with."""
        num_queries = queries.shape[0]
        positive_keys = passage_keys[:num_queries]
        offset = 0
        pair_query_keys, pair_doc_keys = query_keys, positive_keys
        if self.cross_batch:
            rank, _ = world()
            passages, sizes = gather_rows(passages, with_grad=True)
            offset = sum(sizes[:rank])
            passage_keys, _ = gather_rows(passage_keys)
            pair_query_keys, _ = gather_rows(query_keys)
            pair_doc_keys, _ = gather_rows(positive_keys)
        passages = F.normalize(passages.float(), dim=-1)
        if queue is not None:
            passages = torch.cat([passages, queue[0]])
            passage_keys = torch.cat([passage_keys, queue[1]])
        targets = torch.arange(num_queries, device=queries.device) + offset
        scores = F.normalize(queries.float(), dim=-1) @ passages.T
        mask = known_positive_mask(query_keys, pair_query_keys, pair_doc_keys, passage_keys, targets)
        if self.kind == "infonce":
            per_query = info_nce(scores, targets, mask, self.temperature)
        else:
            excluded = self._triplet_excluded(scores, targets, mask, passage_owners, offset)
            per_query = triplet_margin(scores, targets, excluded, self.margin)
        _, world_size = world()
        total = sum_across_ranks(torch.tensor(float(num_queries), device=queries.device))
        return per_query.sum() * world_size / total

    def _triplet_excluded(self, scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                          owners: Optional[torch.Tensor], offset: int) -> torch.Tensor:
        """The candidates the triplet hinge skips: known positives, plus all but the chosen negatives."""
        if self.triplet_negative == "all":
            return mask
        excluded = mask.clone()
        excluded[torch.arange(len(targets), device=targets.device), targets] = True
        if self.triplet_negative == "hardest_in_batch":
            return excluded | ~hardest_negative(scores, excluded)
        if owners is None:
            raise ValueError("the mined triplet negatives need the batch's passage owners")
        return excluded | ~own_passages(owners.to(scores.device), len(targets), scores.shape[1], offset)
