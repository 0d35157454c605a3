"""Positive confidences from miner to trainer: click positives carry a smoothed click-through estimate
(transforms/positives.py), and `tripleminer train --min_positive_confidence` skips rows below it
when reading shards (trainer/data.py), counting them, with a null confidence read as fully trusted."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from conftest import read_rows
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import NESTED_SCHEMA
from tripleminer.trainer.arguments import parse_train_args
from tripleminer.trainer.data import NegativeMix, TripleStream, collate, confident_rows, list_row_groups
from tripleminer.transforms.positives import click_confidence

CONFIDENCES = [0.2, 0.9, None]  # row i has CONFIDENCES[i % 3]
SOURCES = {0.2: "click", 0.9: "failed_search", None: "qrel"}
LAYOUT = [[7], [5, 6], [11]]  # rows per row group, per shard: 29 rows
TOTAL = 29


def row(i: int) -> Dict[str, Any]:
    confidence = CONFIDENCES[i % 3]
    positive = {"doc_id": f"p{i}", "title": None, "text": f"positive {i}", "source": SOURCES[confidence], "confidence": confidence}
    negatives = [{"doc_id": f"n{i}", "title": None, "text": f"negative {i}", "source": "bm25", "rank": 1, "score": 1.0}]
    return {"query_id": f"q{i}", "query": f"query {i}", "positive": positive, "negatives": negatives}


def write_shards(folder: Path, schema: pa.Schema, rows: List[Dict[str, Any]]) -> str:
    start = 0
    for s, groups in enumerate(LAYOUT):
        with pq.ParquetWriter(folder / f"triples-{s:05d}-of-{len(LAYOUT):05d}.parquet", schema) as writer:
            for size in groups:
                writer.write_table(pa.Table.from_pylist(rows[start:start + size], schema=schema))
                start += size
    return str(folder / "triples-*.parquet")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("confidence"), NESTED_SCHEMA, [row(i) for i in range(TOTAL)])


def trusted(i: int, threshold: float) -> bool:
    confidence = CONFIDENCES[i % 3]
    return confidence is None or confidence >= threshold


def test_rows_below_the_threshold_are_skipped_and_counted(shards):
    groups, skipped = confident_rows(list_row_groups([shards]), 0.5)
    want = sorted(f"q{i}" for i in range(TOTAL) if trusted(i, 0.5))
    assert skipped == {"low_confidence/click": TOTAL - len(want)}  # 0.2 rows only; null (qrel) counts as 1.0
    assert sum(g.num_rows for g in groups) == len(want) == 19
    stream = TripleStream(groups, NegativeMix.parse("bm25:1"), seed=3)
    everything = [r["query_id"] for r in stream._rows(0, len(want))]
    assert sorted(everything) == want
    for start, stop in [(0, 1), (2, 9), (5, 6), (10, 19)]:  # any range reads exactly those rows of the epoch order
        assert [r["query_id"] for r in stream._rows(start, stop)] == everything[start:stop]


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 2), (3, 1)])
def test_ranks_split_only_the_kept_rows_and_take_the_same_steps(shards, world_size, num_workers):
    groups, _ = confident_rows(list_row_groups([shards]), 0.5)
    seen, steps = Counter(), set()
    for rank in range(world_size):
        stream = TripleStream(groups, NegativeMix.parse("bm25:1"), rank=rank, world_size=world_size, shuffle_buffer=4)
        batches = list(DataLoader(stream, batch_size=2, collate_fn=collate, num_workers=num_workers))
        assert len(batches) == stream.batches_per_epoch(2, num_workers)
        steps.add(len(batches))
        seen.update(q for b in batches for q in b.queries)
    assert len(steps) == 1 and max(seen.values()) == 1
    assert len(seen) == 19 - 19 % world_size and all(trusted(int(q.split()[1]), 0.5) for q in seen)


def test_no_threshold_reads_every_row_and_a_threshold_of_one_keeps_only_trusted_ones(shards):
    listed = list_row_groups([shards])
    assert confident_rows(listed, None) == (listed, {})
    groups, skipped = confident_rows(listed, 1.0)
    assert sum(g.num_rows for g in groups) == sum(1 for i in range(TOTAL) if CONFIDENCES[i % 3] is None)
    assert skipped == {"low_confidence/click": 10, "low_confidence/failed_search": 10}


def test_shards_from_before_confidences_read_as_trusted(tmp_path):
    fields = [f for f in NESTED_SCHEMA.field("positive").type if f.name != "confidence"]
    old = pa.schema([pa.field("positive", pa.struct(fields), nullable=False) if f.name == "positive" else f for f in NESTED_SCHEMA])
    rows = [dict(r, positive={k: v for k, v in r["positive"].items() if k != "confidence"}) for r in map(row, range(TOTAL))]
    groups, skipped = confident_rows(list_row_groups([write_shards(tmp_path, old, rows)]), 0.5)
    assert skipped == {} and sum(g.num_rows for g in groups) == TOTAL


def test_the_option_parses_and_refuses_values_outside_zero_to_one(capsys):
    _, data, _ = parse_train_args(["--triples", "t/*.parquet", "--min_positive_confidence", "0.5"])
    assert data.min_positive_confidence == 0.5
    assert parse_train_args(["--triples", "t/*.parquet"])[1].min_positive_confidence is None
    with pytest.raises(SystemExit):
        parse_train_args(["--triples", "t/*.parquet", "--min_positive_confidence", "1.5"])
    assert "--min_positive_confidence must be in [0, 1], got 1.5" in capsys.readouterr().err


# A tiny log mined end to end: the click positives' confidences in the nested rows, then filtered.

CORPUS = [{"_id": f"d{i}", "title": f"title {i}", "text": f"document number {i} about topic {i % 3}"} for i in range(1, 9)]
LOG = [  # q1 shows d1, d2, d3 three times: d1 clicked 3 times, d2 once; q2 shows d4, d5 once, d4 clicked
    {"session_id": "s1", "query_id": "q1", "query": "topic one", "timestamp": "2026-04-10T08:00:01Z", "impressions": ["d1", "d2", "d3"], "clicks": ["d1", "d2"]},
    {"session_id": "s2", "query_id": "q1", "query": "topic one", "timestamp": "2026-04-10T08:00:02Z", "impressions": ["d1", "d2", "d3"], "clicks": ["d1"]},
    {"session_id": "s3", "query_id": "q1", "query": "topic one", "timestamp": "2026-04-10T08:00:03Z", "impressions": ["d1", "d2", "d3"], "clicks": ["d1"]},
    {"session_id": "s4", "query_id": "q2", "query": "topic two", "timestamp": "2026-04-10T08:00:04Z", "impressions": ["d4", "d5"], "clicks": ["d4"]},
]
QRELS = "query-id\tcorpus-id\tscore\nq2\td6\t1\n"


def test_click_confidence_is_smoothed_position_free_and_in_zero_one():
    assert [click_confidence(c, n) for c, n in [(1, 1), (4, 4), (1, 5), (3, 3)]] == pytest.approx([0.5, 5 / 7, 0.25, 2 / 3])
    assert click_confidence(1, 1) < click_confidence(4, 4) < 1  # more evidence of the same rate counts more
    assert all(0 < click_confidence(c, n) < 1 for n in range(1, 50) for c in range(0, n + 1))


def test_mined_click_rows_carry_their_confidence_and_the_trainer_filters_them(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(s) + "\n" for s in LOG))
    (tmp_path / "qrels.tsv").write_text(QRELS)
    out = tmp_path / "out"
    inputs = ["--corpus", str(tmp_path / "corpus.jsonl"), "--query_log", str(tmp_path / "log.jsonl"), "--qrels", str(tmp_path / "qrels.tsv"),
              "--work_dir", str(tmp_path / "work"), "--negatives", "impression:1,random:3"]
    # the miner's default --min_click_confidence 0.5 gives q1/d2 (1 click in 3 showings) no row, nor a negative slot
    stats = mine.run(inputs + ["--output", str(tmp_path / "default")])
    default_rows = read_rows(tmp_path / "default")
    assert sorted((r["query_id"], r["positive"]["doc_id"]) for r in default_rows) == [("q1", "d1"), ("q2", "d4"), ("q2", "d6")]
    assert all(n["doc_id"] != "d2" for r in default_rows if r["query_id"] == "q1" for n in r["negatives"])
    assert stats["counters"]["rows"]["click_positives_below_min_click_confidence"] == 1
    mine.run(inputs + ["--output", str(out), "--min_click_confidence", "0"])  # every click a row: the trainer filters
    got: Dict[tuple, Optional[float]] = {(r["query_id"], r["positive"]["doc_id"], r["positive"]["source"]): r["positive"]["confidence"]
                                         for r in read_rows(out)}
    assert got == {("q1", "d1", "click"): pytest.approx(4 / 6), ("q1", "d2", "click"): pytest.approx(2 / 6),
                   ("q2", "d4", "click"): pytest.approx(2 / 4), ("q2", "d6", "qrel"): None}
    groups, skipped = confident_rows(list_row_groups([str(out / "triples-*.parquet")]), 0.5)
    assert skipped == {"low_confidence/click": 1}  # q1/d2 at 1/3; 0.5 is kept (>=), the qrel row is trusted
    kept = TripleStream(groups, NegativeMix.parse("none"))._rows(0, sum(g.num_rows for g in groups))
    assert sorted((r["query_id"], r["positive"]["doc_id"]) for r in kept) == [("q1", "d1"), ("q2", "d4"), ("q2", "d6")]
