"""Shard reader and negative selection of the trainer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from tripleminer.schemas.outputs import NESTED_SCHEMA
from tripleminer.schemas.mix import SourceMix
from tripleminer.trainer.data import (
    NegativeMix,
    TripleStream,
    collate,
    list_row_groups,
    select_negatives,
    stable_key,
)


def negative(doc_id: str, source: str, rank: int | None = None) -> dict:
    return {"doc_id": doc_id, "title": None, "text": f"text of {doc_id}", "source": source, "rank": rank, "score": None}


def row(i: int) -> dict:
    negatives = [negative(f"b{i}-{r}", "bm25", r) for r in (3, 1, 2)]
    negatives += [negative(f"r{i}-{k}", "random") for k in range(2)]
    negatives += [negative(f"a{i}-{r}", "ann", r) for r in (1, 2)]
    positive = {"doc_id": f"p{i}", "title": "T", "text": f"positive {i}", "source": "qrel",
                "label": 1.0, "clicks": None, "impressions": None, "ctr": None}
    return {"query_id": f"q{i}", "query": f"query {i}", "positive": positive, "negatives": negatives}


RNG = np.random.default_rng(0)

# Three shards, four row groups of uneven sizes: 7 | 5 + 6 | 11 rows.
SHARD_LAYOUT = [[7], [5, 6], [11]]
TOTAL = 29


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    i = 0
    for s, groups in enumerate(SHARD_LAYOUT):
        rows = [row(i + k) for k in range(sum(groups))]
        table = pa.Table.from_pylist(rows, schema=NESTED_SCHEMA)
        with pq.ParquetWriter(folder / f"triples-{s:05d}-of-00003.parquet", NESTED_SCHEMA) as writer:
            offset = 0
            for size in groups:
                writer.write_table(table.slice(offset, size))
                offset += size
        i += sum(groups)
    return str(folder / "triples-*.parquet")


def test_mix_parses_the_miners_grammar():
    mix = NegativeMix.parse(" bm25:1@1-50/top, ann:2 ,random:0")
    assert mix.quotas == (SourceMix("bm25", 1, 1, 50, "top"), SourceMix("ann", 2), SourceMix("random", 0))
    assert str(mix) == "bm25:1@1-50/top,ann:2/random,random:0/random"
    assert NegativeMix.parse("none").quotas == () and NegativeMix.parse("").quotas == ()
    for bad in ("bm25", "bm25:x", ":1", "bm25:1,bm25:2", "bm25:-1", "bm25:1@5-2", "bm25:1@0-3", "bm25:1/best"):
        with pytest.raises(ValueError):
            NegativeMix.parse(bad)


def ids(negatives) -> list:
    return [n["doc_id"] for n in negatives]


def test_top_takes_the_best_ranked_per_source_in_mix_order():
    chosen = select_negatives(row(0)["negatives"], NegativeMix.parse("ann:1/top,bm25:2/top,random:0"), RNG)
    assert ids(chosen) == ["a0-1", "b0-1", "b0-2"]


def test_rank_window_limits_ranked_negatives_but_admits_unranked_ones():
    negatives = row(0)["negatives"]
    assert ids(select_negatives(negatives, NegativeMix.parse("bm25:3@2-3/top"), RNG)) == ["b0-2", "b0-3"]
    assert len(select_negatives(negatives, NegativeMix.parse("random:2@5-9"), RNG)) == 2


def test_selection_skips_duplicates_and_exclusions_and_gives_what_exists():
    negatives = [negative("x", "bm25", 1), negative("y", "bm25", 2), negative("x", "ann", 1),
                 negative("z", "ann", 2), negative("pos", "ann", 3)]
    chosen = select_negatives(negatives, NegativeMix.parse("bm25:1/top,ann:5,impression:2"), RNG, exclude=["pos"])
    assert ids(chosen) == ["x", "z"]  # x already taken by bm25, pos excluded, no impression negatives


def test_random_draws_are_seeded_distinct_and_stay_in_the_window():
    negatives = [negative(f"b{r}", "bm25", r) for r in range(1, 21)]
    mix = NegativeMix.parse("bm25:3@1-10")
    draws = [tuple(ids(select_negatives(negatives, mix, np.random.default_rng(s)))) for s in range(20)]
    assert draws[0] == tuple(ids(select_negatives(negatives, mix, np.random.default_rng(0))))
    assert all(len(set(d)) == 3 and all(int(x[1:]) <= 10 for x in d) for d in draws)
    assert len(set(draws)) > 1  # not always the same three


def test_row_groups_come_from_footers(shards):
    groups = list_row_groups([shards])
    assert [g.num_rows for g in groups] == [7, 5, 6, 11]
    with pytest.raises(FileNotFoundError):
        list_row_groups([shards + ".missing"])


def test_any_row_range_reads_exactly_those_rows_of_the_epoch_order(shards):
    stream = TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:1"), seed=3)
    stream.set_epoch(1)
    everything = [r["query_id"] for r in stream._rows(0, TOTAL)]
    assert sorted(everything) == sorted(f"q{i}" for i in range(TOTAL))
    for start, stop in [(0, 1), (3, 9), (6, 8), (12, 25), (28, 29), (5, 5)]:
        assert [r["query_id"] for r in stream._rows(start, stop)] == everything[start:stop]


def read_rank(shards: str, rank: int, world_size: int, num_workers: int, epoch: int = 0, seed: int = 0):
    stream = TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:1,ann:1/top"), seed=seed, rank=rank,
                          world_size=world_size, shuffle_buffer=4)
    stream.set_epoch(epoch)
    batches = list(DataLoader(stream, batch_size=3, collate_fn=collate, num_workers=num_workers))
    assert len(batches) == stream.batches_per_epoch(3, num_workers)
    return [q for batch in batches for q in batch.queries], len(batches)


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 2), (3, 2)])
def test_ranks_and_workers_split_rows_without_duplicates_or_loss(shards, world_size, num_workers):
    per_rank = [read_rank(shards, r, world_size, num_workers) for r in range(world_size)]
    seen = Counter(q for queries, _ in per_rank for q in queries)
    assert max(seen.values()) == 1
    assert len(seen) == TOTAL - TOTAL % world_size  # only the < world_size left-over rows are skipped
    assert len({len(queries) for queries, _ in per_rank}) == 1  # every rank the same rows ...
    assert len({steps for _, steps in per_rank}) == 1  # ... and the same number of batches


def test_order_is_seeded_and_changes_with_the_epoch(shards):
    first, _ = read_rank(shards, 0, 1, 0, epoch=0)
    assert read_rank(shards, 0, 1, 0, epoch=0)[0] == first
    second, _ = read_rank(shards, 0, 1, 0, epoch=1)
    assert second != first and sorted(second) == sorted(first)


def test_collate_puts_positives_first_then_each_examples_negatives(shards):
    stream = TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:1/top,ann:1/top"), shuffle_buffer=1)
    examples = list(iter(stream))[:3]
    batch = collate(examples)
    i, j, k = (e.query_id[1:] for e in examples)
    assert batch.queries == [f"query {i}", f"query {j}", f"query {k}"]
    assert batch.passages[:3] == [f"T positive {i}", f"T positive {j}", f"T positive {k}"]
    assert batch.passages[3:5] == [f"text of b{i}-1", f"text of a{i}-1"]
    assert batch.passage_keys.tolist()[:1] == [stable_key(f"p{i}")]
    assert batch.query_keys.tolist() == [stable_key(f"q{n}") for n in (i, j, k)]
    assert len(batch.passages) == 9


def negatives_by_query(shards: str, world_size: int, epoch: int) -> dict:
    drawn = {}
    for rank in range(world_size):
        stream = TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:1,ann:1"), rank=rank,
                              world_size=world_size)
        stream.set_epoch(epoch)
        drawn.update({e.query_id: e.negative_ids for e in stream})
    return drawn


def test_random_draws_follow_the_example_and_epoch_not_the_partitioning(shards):
    alone, split = negatives_by_query(shards, 1, epoch=0), negatives_by_query(shards, 3, epoch=0)
    assert all(alone[q] == split[q] for q in split)
    next_epoch = negatives_by_query(shards, 1, epoch=1)
    assert any(alone[q] != next_epoch[q] for q in alone)


def test_collate_records_which_row_brought_each_passage(shards):
    stream = TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:2/top,ann:1/top"), shuffle_buffer=1)
    batch = collate(list(iter(stream))[:2])
    assert batch.passage_owners.tolist() == [0, 1, 0, 0, 0, 1, 1, 1]  # 2 positives, then 3 negatives each
