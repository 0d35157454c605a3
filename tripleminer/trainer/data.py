"""Stream nested triple shards into training batches.

Every reader process (rank x dataloader worker) owns one contiguous slice of a virtual row sequence:
the shards' row groups in a per-epoch seeded order. It opens only the row groups its slice touches
and reads them record batch by record batch, so no process holds the data set in memory and no row
is read by two processes. Each rank gets the same number of rows (the at most `world_size - 1`
left-over rows of an epoch are skipped), so all ranks take the same number of steps and none waits
forever in a collective. Which negatives an example keeps is decided here, per source and count, so
one mined set serves any mix.

With `ClusterBatches` every batch holds queries of one cluster (the shards' `query_cluster` column,
TAS-style topic-aware batches): examples stream into one buffer per cluster, a full buffer becomes a
batch, and the part-filled buffers left at the end of a reader's slice are mixed into its last
batches. At most clusters x (batch size - 1) examples wait in the buffers, so reading stays streaming.

`confident_rows` narrows the row groups to the rows a filter keeps (`--min_positive_confidence`)
before any of this, so the split into ranks and workers, and every rank's step count, count only them.
"""

from __future__ import annotations

import glob
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tripleminer.schemas.mix import SourceMix, parse_mix
from tripleminer.schemas.outputs import CLUSTER_COLUMN, passage_text
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
    cluster: Optional[int] = None  # the row's query_cluster, where the shards have one


LOW_CONFIDENCE = "low_confidence"  # skip reason: the positive's confidence is below --min_positive_confidence


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    num_rows: int  # the rows the stream reads: the whole group, or those a filter kept
    rows: Optional[np.ndarray] = field(default=None, compare=False, repr=False)  # their positions in the group, ascending; None: all


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


def require_cluster_column(row_groups: Sequence[RowGroup]) -> None:
    """Refuse shards without an integer `query_cluster` column before any training starts."""
    for path in sorted({g.path for g in row_groups}):
        schema = pq.ParquetFile(path).schema_arrow
        index = schema.get_field_index(CLUSTER_COLUMN)
        if index < 0 or not pa.types.is_integer(schema.field(index).type):
            raise ValueError(
                f"--batch_by_cluster needs an integer {CLUSTER_COLUMN!r} column, which {path} lacks; "
                "write it with `tripleminer mine --query_clusters K`"
            )


def confident_rows(row_groups: Sequence[RowGroup], min_confidence: Optional[float]) -> Tuple[List[RowGroup], Dict[str, int]]:
    """The row groups narrowed to rows whose positive's confidence is at least `min_confidence`, and the
    rows skipped per reason and positive source (`"low_confidence/click": 12`); None: no filter.

    A null confidence counts as 1.0, fully trusted: judged (qrel) positives have none, a judgement needing
    no estimate, and neither have sources that make no estimate (pretext pairs, cross-encoder-augmented
    positives) nor shards written before positives carried one. Only the positives' confidence and source
    columns are read, once, before the rows are split into ranks and workers, so every rank still gets as
    many rows (and steps) as the others.
    """
    if min_confidence is None:
        return list(row_groups), {}
    kept: List[RowGroup] = []
    skipped: Counter = Counter()
    for group in row_groups:
        shard = pq.ParquetFile(group.path)
        has_confidence = shard.schema_arrow.field("positive").type.get_field_index("confidence") >= 0
        columns = ["positive.source"] + (["positive.confidence"] if has_confidence else [])
        positive = shard.read_row_group(group.index, columns=columns).column("positive").combine_chunks()
        confidence = positive.field("confidence") if has_confidence else pa.nulls(len(positive), pa.float64())
        low = pc.less(pc.fill_null(confidence, 1.0), min_confidence).to_numpy(zero_copy_only=False)
        skipped.update(f"{LOW_CONFIDENCE}/{source}" for source, out in zip(positive.field("source").to_pylist(), low) if out)
        if low.all():
            continue
        rows = None if not low.any() else np.flatnonzero(~low).astype(np.int32)
        kept.append(RowGroup(group.path, group.index, int((~low).sum()), rows))
    return kept, dict(sorted(skipped.items()))


def positive_pairs(row_groups: Sequence[RowGroup]) -> Iterator[Tuple[str, str]]:
    """(query id, positive doc id) of every row, reading only those two columns."""
    for path in sorted({g.path for g in row_groups}):
        table = pq.read_table(path, columns=["query_id", "positive.doc_id"])
        yield from zip(*(table.column(i).to_pylist() for i in range(2)))


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
        """Rows [lo, hi) of those the stream reads from the group, record batch by record batch."""
        wanted = np.arange(lo, hi) if group.rows is None else group.rows[lo:hi]  # positions in the group, ascending
        position = 0
        batches = pq.ParquetFile(group.path).iter_batches(batch_size=self.read_batch_size, row_groups=[group.index])
        for batch in batches:
            a, b = np.searchsorted(wanted, [position, position + batch.num_rows])
            if a < b:
                yield from batch.take(pa.array(wanted[a:b] - position)).to_pylist()
            position += batch.num_rows
            if b == len(wanted):
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
            cluster=row.get(CLUSTER_COLUMN),
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


def cluster_batches(examples: Iterable[Example], batch_size: int) -> Iterator[List[Example]]:
    """Batches of one cluster each while clusters fill up; the remainders, mixed, at the end.

    Yields as many batches as plain batching would (ceil(examples / batch_size)), so every rank still
    takes the same number of steps.
    """
    buffers: Dict[Optional[int], List[Example]] = {}
    for example in examples:
        buffer = buffers.setdefault(example.cluster, [])
        buffer.append(example)
        if len(buffer) == batch_size:
            yield buffers.pop(example.cluster)
    rest = [example for buffer in buffers.values() for example in buffer]
    for start in range(0, len(rest), batch_size):
        yield rest[start : start + batch_size]


class ClusterBatches(IterableDataset):
    """A `TripleStream` regrouped by `cluster_batches`, in each dataloader worker separately."""

    def __init__(self, stream: TripleStream, batch_size: int) -> None:
        self.stream = stream
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[Example]]:
        return cluster_batches(iter(self.stream), self.batch_size)


@dataclass
class Batch:
    """A training batch. `passages[i]` is the positive of `queries[i]`; hard negatives follow.

    The integer keys let the loss recognise the same query or document across ranks, to keep a
    query's other positives from counting as its negatives; `passage_owners[j]` is the row whose
    example brought passage j (its positive or one of its mined negatives).
    """

    queries: List[str]
    passages: List[str]
    query_keys: torch.Tensor
    passage_keys: torch.Tensor
    passage_owners: torch.Tensor


def collate(examples: Sequence[Example]) -> Batch:
    passages = [e.positive for e in examples] + [text for e in examples for text in e.negatives]
    passage_ids = [e.positive_id for e in examples] + [doc for e in examples for doc in e.negative_ids]
    owners = list(range(len(examples))) + [i for i, e in enumerate(examples) for _ in e.negatives]
    return Batch(
        queries=[e.query for e in examples],
        passages=passages,
        query_keys=torch.tensor([stable_key(e.query_id) for e in examples], dtype=torch.long),
        passage_keys=torch.tensor([stable_key(d) for d in passage_ids], dtype=torch.long),
        passage_owners=torch.tensor(owners, dtype=torch.long),
    )


def training_loader(
    stream: TripleStream, batch_size: int, num_workers: int, by_cluster: bool, seed: int
) -> DataLoader:
    """The rank's DataLoader, plain or one cluster per batch.

    It draws its workers' base seed from its own generator, not the global one: the global RNG
    (dropout) then does not depend on when an epoch's iterator was created, which keeps a resumed
    run on the same random numbers as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(seed)
    if by_cluster:
        return DataLoader(ClusterBatches(stream, batch_size), batch_size=None, collate_fn=collate,
                          num_workers=num_workers, generator=generator)
    return DataLoader(stream, batch_size=batch_size, collate_fn=collate, num_workers=num_workers, generator=generator)
