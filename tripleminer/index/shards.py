"""What every sharded index shares: which shard a document lives in, and the per-query merge."""

from __future__ import annotations

from typing import List, Sequence, Tuple

from tripleminer.seeding import stable_seed


def shard_of(doc_id: str, num_shards: int) -> int:
    """The index shard a document lives in: stable across runs, workers and Python versions."""
    return stable_seed("index-shard", doc_id) % num_shards


def merge_top_k(parts: Sequence[Tuple[Sequence[str], Sequence[float]]], k: int) -> Tuple[List[str], List[float]]:
    """Merge per-shard (ids, scores) lists of one query into the global top-k.

    Ties break by doc id, so the merged order does not depend on which shard answered first.
    """
    pooled = [(float(s), d) for ids, scores in parts for d, s in zip(ids, scores)]
    pooled.sort(key=lambda t: (-t[0], t[1]))
    top = pooled[:k]
    return [d for _, d in top], [s for s, _ in top]
