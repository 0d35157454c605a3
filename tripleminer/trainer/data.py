"""Stream nested triple shards into training batches.

Every reader process (rank x dataloader worker) owns one contiguous slice of a virtual row sequence:
the shards' row groups in a per-epoch seeded order. It opens only the row groups its slice touches
and reads them record batch by record batch, so no process holds the data set in memory and no row
is read by two processes. Each rank gets the same number of rows (the at most `world_size - 1`
left-over rows of an epoch are skipped), so all ranks take the same number of steps and none waits
forever in a collective. Which negatives an example keeps is decided here, per source and count, so
one mined set serves any mix.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tripleminer.schemas.mix import SourceMix, parse_mix
from tripleminer.schemas.outputs import passage_text
from tripleminer.seeding import stable_seed


def stable_key(text: str) -> int:
    """`stable_seed(text)` as a signed 64-bit id, so it fits a `torch.long` tensor."""
    key = stable_seed(text)
    return key - 2**64 if key >= 2**63 else key


@dataclass(frozen=True)
class NegativeMix:
    """Negatives per example by source, in the miner's grammar (`tripleminer.schemas.mix`):
    `bm25:1@1-50/top,ann:1,random:0`; an empty spec or `none` means in-batch negatives only."""

    quotas: Tuple[SourceMix, ...]

    @classmethod
    def parse(cls, spec: str) -> "NegativeMix":
        return cls(tuple(parse_mix(spec)))

    def __str__(self) -> str:
        return ",".join(map(str, self.quotas)) or "none"


def select_negatives(
    negatives: Sequence[Mapping[str, Any]],
    mix: NegativeMix,
    rng: np.random.Generator,
    exclude: Iterable[str] = (),
) -> List[Mapping[str, Any]]:
    """The negatives an example trains on: per source in mix order, `count` of those in its rank
    window, the best ranked (`top`) or a uniform draw with `rng` (`random`), never a document
    already taken or in `exclude`.

    A source with fewer candidates than asked gives what it has; the loss copes with uneven counts.
    """
    taken = set(exclude)
    chosen: List[Mapping[str, Any]] = []
    for quota in mix.quotas:
        ranked = sorted((n for n in negatives if n["source"] == quota.source and quota.in_window(n.get("rank"))), key=lambda n: math.inf if n.get("rank") is None else n["rank"])
        pool, seen = [], set(taken)
        for negative in ranked:  # the best-ranked copy of each document not taken yet
            if negative["doc_id"] not in seen:
                seen.add(negative["doc_id"])
                pool.append(negative)
        if quota.strategy == "random" and len(pool) > quota.count:
            picked = [pool[i] for i in sorted(rng.choice(len(pool), size=quota.count, replace=False))]
        else:
            picked = pool[: quota.count]
        taken.update(n["doc_id"] for n in picked)
        chosen += picked
    return chosen


@dataclass(frozen=True)
class Example:
    query_id: str
    query: str
    positive_id: str
    positive: str
    negative_ids: Tuple[str, ...]
    negatives: Tuple[str, ...]


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    num_rows: int


def list_row_groups(patterns: Sequence[str]) -> List[RowGroup]:
    """Every row group of the shards the glob patterns match, in path order (from footers only)."""
    paths = sorted({path for pattern in patterns for path in glob.glob(pattern)})
    if not paths:
        raise FileNotFoundError(f"no shard matches {list(patterns)}")
    groups = []
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        groups += [RowGroup(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return groups


def split_range(start: int, stop: int, parts: int, index: int) -> Tuple[int, int]:
    """The `index`-th of `parts` contiguous, near-equal pieces of [start, stop)."""
    size = stop - start
    return start + size * index // parts, start + size * (index + 1) // parts


class TripleStream(IterableDataset):
    """Examples of one rank, split further across its dataloader workers, in seeded order."""

    def __init__(
        self,
        row_groups: Sequence[RowGroup],
        mix: NegativeMix,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1024,
        read_batch_size: int = 256,
    ) -> None:
        self.row_groups = list(row_groups)
        self.mix = mix
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.read_batch_size = read_batch_size
        self.epoch = 0
        total = sum(g.num_rows for g in self.row_groups)
        self.rows_per_rank = total // world_size

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch; call before iterating the DataLoader (workers copy the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rows_per_rank

    def batches_per_epoch(self, batch_size: int, num_workers: int) -> int:
        """Batches this rank's DataLoader yields: each worker batches its own slice, ending on a short batch."""
        parts = max(num_workers, 1)
        sizes = [b - a for a, b in (split_range(0, self.rows_per_rank, parts, w) for w in range(parts))]
        return sum(math.ceil(size / batch_size) for size in sizes)

    def __iter__(self) -> Iterator[Example]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank_start = self.rank * self.rows_per_rank
        start, stop = split_range(rank_start, rank_start + self.rows_per_rank, workers, worker)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        examples = (self._example(row) for row in self._rows(start, stop))
        return _shuffled(examples, self.shuffle_buffer, rng)

    def _order(self) -> List[RowGroup]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.row_groups))
        return [self.row_groups[i] for i in order]

    def _rows(self, start: int, stop: int) -> Iterator[Dict[str, Any]]:
        """Rows [start, stop) of the epoch's virtual sequence, reading only the row groups they lie in."""
        offset = 0
        for group in self._order():
            lo, hi = max(start, offset), min(stop, offset + group.num_rows)
            if lo < hi:
                yield from self._read_group(group, lo - offset, hi - offset)
            offset += group.num_rows
            if offset >= stop:
                return

    def _read_group(self, group: RowGroup, lo: int, hi: int) -> Iterator[Dict[str, Any]]:
        position = 0
        batches = pq.ParquetFile(group.path).iter_batches(batch_size=self.read_batch_size, row_groups=[group.index])
        for batch in batches:
            a, b = max(lo, position), min(hi, position + batch.num_rows)
            if a < b:
                yield from batch.slice(a - position, b - a).to_pylist()
            position += batch.num_rows
            if position >= hi:
                return

    def _example(self, row: Mapping[str, Any]) -> Example:
        positive = row["positive"]
        # Draws depend on the example and epoch only, not on which rank or worker reads it.
        ids = [stable_seed(row["query_id"]), stable_seed(positive["doc_id"])]
        rng = np.random.default_rng([self.seed, self.epoch, *ids])
        negatives = select_negatives(row["negatives"], self.mix, rng, exclude=[positive["doc_id"]])
        return Example(
            query_id=row["query_id"],
            query=row["query"],
            positive_id=positive["doc_id"],
            positive=passage_text(positive),
            negative_ids=tuple(n["doc_id"] for n in negatives),
            negatives=tuple(passage_text(n) for n in negatives),
        )


def _shuffled(items: Iterator[Example], size: int, rng: np.random.Generator) -> Iterator[Example]:
    """Approximate shuffle of a stream with a buffer of `size` items (exact when the stream fits)."""
    buffer: List[Example] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


@dataclass
class Batch:
    """A training batch. `passages[i]` is the positive of `queries[i]`; hard negatives follow.

    The integer keys let the loss recognise the same query or document across ranks, to keep a
    query's other positives from counting as its negatives.
    """

    queries: List[str]
    passages: List[str]
    query_keys: torch.Tensor
    passage_keys: torch.Tensor


def collate(examples: Sequence[Example]) -> Batch:
    passages = [e.positive for e in examples] + [text for e in examples for text in e.negatives]
    passage_ids = [e.positive_id for e in examples] + [doc for e in examples for doc in e.negative_ids]
    return Batch(
        queries=[e.query for e in examples],
        passages=passages,
        query_keys=torch.tensor([stable_key(e.query_id) for e in examples], dtype=torch.long),
        passage_keys=torch.tensor([stable_key(d) for d in passage_ids], dtype=torch.long),
    )
