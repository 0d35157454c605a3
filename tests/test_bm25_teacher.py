"""bm25_teacher positives (transforms/bm25_teacher.py) end to end on a slice of real SciFact: queries
without train qrels get BM25's top k as positives, checked against tripleminer's own BM25 index, never
as negatives of their row, deterministically; `unlabelled` leaves labelled queries' rows as they were,
`all` adds teacher positives to them. Plus the option errors."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest

from conftest import canonical, read_jsonl, read_rows
from tripleminer.index import bm25
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import passage_text
from tripleminer.trainer.evaluate import load_qrels
from tripleminer.transforms import bm25_teacher as bt

pytestmark = pytest.mark.slow  # the mine pipeline over the SciFact corpus

K = 2
MIX = "bm25:3@1-20/top,random:1"  # /top from rank 1: a teacher positive left in the pool would be taken
LABELLED, UNLABELLED = 8, 8


def train_qrels(scifact: Path) -> Dict[str, Set[str]]:
    return {q: set(docs) for q, docs in load_qrels(scifact / "qrels" / "train.tsv").items()}


@pytest.fixture(scope="module")
def data(scifact, tmp_path_factory) -> Dict[str, Any]:
    """A queries file of the first 8 queries with train qrels and the first 8 without (test queries)."""
    folder = tmp_path_factory.mktemp("teacher")
    judged = train_qrels(scifact)
    queries = read_jsonl(scifact / "queries.jsonl")
    labelled = [q for q in queries if q["_id"] in judged][:LABELLED]
    unlabelled = [q for q in queries if q["_id"] not in judged][:UNLABELLED]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in labelled + unlabelled))
    return {"folder": folder, "judged": judged, "text": {q["_id"]: q["text"] for q in labelled + unlabelled},
            "labelled": {q["_id"] for q in labelled}, "unlabelled": {q["_id"] for q in unlabelled}}


def mine_slice(scifact: Path, data: Dict[str, Any], name: str, *extra: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    out = data["folder"] / name
    stats = mine.run(["--corpus", str(scifact / "corpus.jsonl"), "--queries", str(data["folder"] / "queries.jsonl"),
                      "--qrels", str(scifact / "qrels" / "train.tsv"), "--output", str(out),
                      "--work_dir", str(data["folder"] / "work"), "--negatives", MIX, "--seed", "5", *extra])
    return stats, read_rows(out)


@pytest.fixture(scope="module")
def runs(scifact, data) -> Dict[str, Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
    teacher = ["--positives", "qrel,bm25_teacher", "--bm25_teacher_k", str(K)]
    return {
        "qrel": mine_slice(scifact, data, "qrel", "--positives", "qrel"),
        "unlabelled": mine_slice(scifact, data, "unlabelled", *teacher),
        "all": mine_slice(scifact, data, "all", *teacher, "--bm25_teacher_queries", "all"),
    }


@pytest.fixture(scope="module")
def bm25_top(scifact, data, tmp_path_factory) -> Dict[str, List[Tuple[str, float]]]:
    """Every sliced query's BM25 top k from tripleminer's BM25 index over the whole corpus, built here directly."""
    docs = read_jsonl(scifact / "corpus.jsonl")
    index = tmp_path_factory.mktemp("bm25")
    bm25.build([d["_id"] for d in docs], [passage_text(d) for d in docs], bm25.BM25Settings(), str(index))
    qids = sorted(data["text"])
    ids, scores = bm25.BM25Shard(str(index)).search([data["text"][q] for q in qids], K)
    return {q: list(zip(row_ids, row_scores)) for q, row_ids, row_scores in zip(qids, ids, scores)}


def by_query(rows: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        out[r["query_id"]].append(r)
    return out


def check_teacher_positive(p: Dict[str, Any], top: List[Tuple[str, float]], judged: bool = False) -> None:
    """A teacher positive is the passage at its rank of the query's BM25 ranking, with its score and
    confidence = score / the top score; a judged one keeps no confidence (null: trusted)."""
    doc_id, score = top[p["teacher_rank"] - 1]
    assert p["doc_id"] == doc_id
    assert p["teacher_score"] == pytest.approx(score, rel=1e-6)
    if judged:
        assert p["confidence"] is None
    else:
        assert p["confidence"] == pytest.approx(score / top[0][1], rel=1e-6) and 0 < p["confidence"] <= 1


def test_unlabelled_queries_get_their_bm25_top_k_and_are_counted(runs, data, bm25_top):
    stats, rows = runs["unlabelled"]
    queries = by_query(rows)
    assert set(queries) == data["labelled"] | data["unlabelled"]
    for qid in data["unlabelled"]:
        positives = [r["positive"] for r in queries[qid]]
        assert all(p["source"] == bt.SOURCE for p in positives)
        assert sorted(p["teacher_rank"] for p in positives) == list(range(1, K + 1))
        assert {p["doc_id"] for p in positives} == {d for d, _ in bm25_top[qid]}
        for p in positives:
            check_teacher_positive(p, bm25_top[qid])
    c = stats["counters"][bt.NAMESPACE]
    assert c == {"queries_searched": UNLABELLED, "queries_given_positives": UNLABELLED,
                 "queries_left_to_their_labels": LABELLED, "positives": K * UNLABELLED}
    # the queries that had no row before now have rows, and every query read is accounted for
    assert runs["qrel"][0]["queries_without_positive"] == UNLABELLED
    assert stats["queries_with_positive"] == LABELLED + UNLABELLED and stats["queries_without_positive"] == 0


@pytest.mark.parametrize("run", ["unlabelled", "all"])
def test_a_teacher_positive_is_never_a_negative_of_its_query(runs, run):
    _, rows = runs[run]
    for qid, query_rows in by_query(rows).items():
        positives = {r["positive"]["doc_id"] for r in query_rows}
        for r in query_rows:
            negatives = [n["doc_id"] for n in r["negatives"]]
            assert not set(negatives) & positives, qid
            if all(q["positive"]["source"] == bt.SOURCE for q in query_rows):
                # the bm25 window starts at rank 1 and takes the top: the ranks right after the teacher's
                assert [n["rank"] for n in r["negatives"] if n["source"] == "bm25"] == [K + 1, K + 2, K + 3]


def test_unlabelled_leaves_labelled_queries_rows_as_they_were(runs, data):
    (_, plain), (_, taught) = runs["qrel"], runs["unlabelled"]
    labelled = [r for r in taught if r["query_id"] in data["labelled"]]
    assert all(r["positive"]["source"] == "qrel" for r in labelled)
    assert canonical(labelled) == canonical(plain)


def test_all_adds_teacher_positives_to_labelled_queries(runs, data, bm25_top):
    stats, rows = runs["all"]
    queries = by_query(rows)
    assert stats["counters"][bt.NAMESPACE]["queries_searched"] == LABELLED + UNLABELLED
    merged = 0
    for qid in data["labelled"]:
        positives = {r["positive"]["doc_id"]: r["positive"] for r in queries[qid]}
        teacher = {d for d, _ in bm25_top[qid]}
        assert set(positives) == (data["judged"][qid] | teacher)
        for doc_id, p in positives.items():
            judged = doc_id in data["judged"][qid]
            if doc_id in teacher:
                check_teacher_positive(p, bm25_top[qid], judged)
            if judged:
                assert p["source"] == ("qrel+bm25_teacher" if doc_id in teacher else "qrel") and p["label"] == 1.0
                merged += doc_id in teacher  # one row for a pair both found, the judgement first
    assert merged  # BM25's top 2 holds a judged document of some of the first SciFact queries
    unlabelled_rows = [r for r in rows if r["query_id"] in data["unlabelled"]]
    assert canonical(unlabelled_rows) == canonical([r for r in runs["unlabelled"][1] if r["query_id"] in data["unlabelled"]])


def test_deterministic_with_the_seed(runs, scifact, data):
    _, rows = runs["unlabelled"]
    teacher = ["--positives", "qrel,bm25_teacher", "--bm25_teacher_k", str(K)]
    _, again = mine_slice(scifact, data, "again", *teacher, "--bm25_shards", "3")  # and a sharded index: the same rows
    assert canonical(again) == canonical(rows)
    _, reseeded = mine_slice(scifact, data, "reseeded", *teacher, "--seed", "6")
    assert canonical(reseeded) != canonical(rows)  # the random negatives change ...
    assert sorted((r["query_id"], r["positive"]["doc_id"]) for r in reseeded) == sorted(
        (r["query_id"], r["positive"]["doc_id"]) for r in rows)  # ... the teacher's positives do not


def plan(*argv: str) -> mine.MineSettings:
    return mine.plan(mine.SPEC.options(["--corpus", "c.jsonl", "--output", "out", *argv]))


def test_options_name_the_teacher_only_when_asked_and_refuse_bad_values(capsys):
    assert "bm25_teacher" not in plan("--qrels", "q.tsv", "--queries", "q.jsonl").labels.positives  # never on by default
    assert plan("--qrels", "q.tsv").labels.teacher is None
    s = plan("--queries", "q.jsonl", "--positives", "bm25_teacher")  # needs no labels, only query texts
    assert s.labels.positives == ("bm25_teacher",) and s.labels.teacher == bt.TeacherSettings(2, "unlabelled")
    assert plan("--query_log", "log.jsonl", "--positives", "click,bm25_teacher", "--bm25_teacher_k", "10",
                "--bm25_teacher_queries", "all").labels.teacher == bt.TeacherSettings(10, "all")
    for argv, message in [
        (["--qrels", "q.tsv", "--positives", "bm25_teacher"], "--positives bm25_teacher needs --queries or --query_log"),
        (["--queries", "q.jsonl", "--positives", "bm25_teacher", "--bm25_teacher_k", "0"], "--bm25_teacher_k must be >= 1"),
        (["--queries", "q.jsonl"], "need labels"),
    ]:
        with pytest.raises(ValueError, match=message):
            plan(*argv)
    with pytest.raises(SystemExit):
        plan("--queries", "q.jsonl", "--positives", "bm25_teacher", "--bm25_teacher_queries", "some")
    assert "--bm25_teacher_queries: invalid choice: 'some' (choose from 'unlabelled', 'all')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--bm25_teacher_queries must be one of unlabelled, all"):
        bt.TeacherSettings(queries="some")
