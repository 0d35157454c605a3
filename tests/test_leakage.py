"""The evaluation-leakage guard (transforms/leakage.py): evaluation files resolve to the queries and
judged documents of their evaluation split only; a training query that duplicates an evaluation
query (exactly, or with an edited word) is dropped and reported with its match while an untouched
one is kept; a row whose positive is judged for evaluation is dropped; a judged document is never a
negative; and, end to end on a tiny hand-made dataset, the mine pipeline writes exactly that, with
every drop counted in stats.json and listed in leakage-*.jsonl, together with the near-duplicate
filter and the audit sample, while a run without the options writes the leaks."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import query_record, run
from tripleminer.io.readers import InputError
from tripleminer import audit
from tripleminer.pipelines import mine
from tripleminer.report import write_report
from tripleminer.transforms.common import candidates
from tripleminer.transforms.leakage import (NEGATIVE_JUDGED, POSITIVE_JUDGED, QUERY_EXACT, QUERY_NEAR, EvalFiles, EvalSet,
                                            LeakageGuard, LeakageSettings, _EvalIndex, load_eval, resolve_eval)

EVAL_QUERIES = {
    "e1": "Obesity decreases life quality in adults with type 2 diabetes.",
    "e2": "Vitamin D supplements prevent bone fractures in elderly women.",
    "t9": "Aspirin lowers the risk of colorectal cancer.",  # a TRAINING query of the eval dataset: not an eval query
}


def write_jsonl(path: Path, rows: List[Dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def beir_eval(root: Path) -> Path:
    """A BEIR folder whose queries.jsonl holds test and train queries; qrels/test.tsv judges e1, e2."""
    write_jsonl(root / "queries.jsonl", [{"_id": k, "text": v} for k, v in EVAL_QUERIES.items()])
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\ne1\td05\t1\ne2\td06\t2\ne2\td07\t0\n")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nt9\td08\t1\n")
    return root


# ------------------------------------------------------------------ reading the evaluation files


def test_a_beir_folder_means_its_test_split(tmp_path):
    root = beir_eval(tmp_path / "eval")
    (src,) = resolve_eval([str(root)])
    assert src.restrict_to_judged and src.qrels == (str(root / "qrels" / "test.tsv"),)
    ev = load_eval([src])
    assert sorted(q["query_id"] for q in ev.queries) == ["e1", "e2"]  # t9 is judged in train only
    assert sorted(ev.judged) == ["d05", "d06"]  # d07 is judged NOT relevant
    assert ev.judged["d06"] == [{"dataset": str(root), "query_id": "e2", "query": EVAL_QUERIES["e2"], "score": 2.0}]


def test_a_qrels_file_takes_its_texts_from_the_beir_layout_and_a_queries_file_is_all_eval(tmp_path):
    root = beir_eval(tmp_path / "eval")
    (dev,) = resolve_eval([str(root / "qrels" / "train.tsv")])
    assert dev.queries == (str(root / "queries.jsonl"),) and dev.restrict_to_judged
    assert [q["query_id"] for q in load_eval([dev]).queries] == ["t9"]
    lone = write_jsonl(tmp_path / "lone" / "eval_queries.jsonl", [{"_id": "x1", "text": "a lone query"}])
    (src,) = resolve_eval([str(lone)])
    assert src == EvalFiles(str(lone), (str(lone),), ())
    assert load_eval([src]).judged == {}
    with pytest.raises(InputError, match="--exclude_eval"):
        resolve_eval([str(tmp_path / "missing.jsonl")])


def test_duplicates_are_found_exactly_or_near_and_untouched_queries_are_not():
    ev = EvalSet([{"dataset": "d", "query_id": k, "query": v} for k, v in EVAL_QUERIES.items() if k != "t9"], {})
    index = _EvalIndex(ev, 0.6)
    reason, matches = index.match("OBESITY decreases life-quality in adults with type 2 diabetes!")
    assert reason == QUERY_EXACT and matches[0]["query_id"] == "e1" and matches[0]["jaccard"] == 1.0
    reason, matches = index.match("Obesity reduces life quality in adults with type 2 diabetes.")  # one word edited
    assert reason == QUERY_NEAR and matches[0]["query_id"] == "e1" and 0.6 <= matches[0]["jaccard"] < 1.0
    assert index.match("Obesity increases the risk of heart failure.") == (None, [])
    assert index.match(EVAL_QUERIES["t9"]) == (None, [])


# ------------------------------------------------------------------ the guard's steps in Beam


def test_the_guard_drops_queries_positives_and_negatives_and_reports_each(tmp_path):
    settings = LeakageSettings(resolve_eval([str(beir_eval(tmp_path / "eval"))]), 0.6, "all")
    records = [query_record("q1", ["d01"], "Obesity reduces life quality in adults with type 2 diabetes."),
               query_record("q2", ["d02"], "Aspirin lowers the risk of colorectal cancer.")]
    cands = [("q2", candidates("bm25", ["d06", "d03", "d05"], ranks=[1, 2, 3], scores=[3.0, 2.0, 1.0]))]
    rows = [{"query_id": "q2", "query": "x", "positive": {"doc_id": "d05", "source": "qrel"}, "negatives": []},
            {"query_id": "q2", "query": "x", "positive": {"doc_id": "d02", "source": "qrel"}, "negatives": []}]
    def build(p: beam.Pipeline) -> None:
        guard = LeakageGuard(p, settings)
        kept = guard.queries(p | "Records" >> beam.Create(records))
        assert_that(kept | beam.Map(lambda r: r["query_id"]), equal_to(["q2"]), label="Queries")
        negs = guard.negatives(p | "Cands" >> beam.Create(cands))
        assert_that(negs, equal_to([("q2", candidates("bm25", ["d03"], ranks=[2], scores=[2.0]))]), label="Negatives")
        pos = guard.positives(p | "Rows" >> beam.Create(rows))
        assert_that(pos | beam.Map(lambda r: r["positive"]["doc_id"]), equal_to(["d02"]), label="Positives")
        report = guard.reports | beam.Flatten() | beam.Map(lambda e: (e["reason"], e["query_id"], e.get("doc_id"),
                                                                      sorted(m["query_id"] for m in e["eval"])))
        assert_that(report, equal_to([(QUERY_NEAR, "q1", None, ["e1"]), (NEGATIVE_JUDGED, "q2", "d06", ["e2"]),
                                      (NEGATIVE_JUDGED, "q2", "d05", ["e1"]), (POSITIVE_JUDGED, "q2", "d05", ["e1"])]), label="Report")

    c = run(build)["leakage"]
    assert c[QUERY_NEAR] == 1 and c.get(QUERY_EXACT, 0) == 0 and c["positives_of_dropped_queries"] == 1
    assert c[NEGATIVE_JUDGED] == 2 and c[f"{NEGATIVE_JUDGED}_bm25"] == 2 and c[POSITIVE_JUDGED] == 1
    assert c["eval_queries"] == 2 and c["eval_judged_docs"] == 2


def test_positives_only_keeps_judged_documents_among_the_negatives(tmp_path):
    settings = LeakageSettings(resolve_eval([str(beir_eval(tmp_path / "eval"))]), 0.6, "positives")
    assert settings.check_positives and not settings.check_negatives
    assert not LeakageSettings((), docs="none").check_positives


# ------------------------------------------------------------------ end to end (tiny, hand-made data)

def corpus_text(i: int) -> str:
    rng = random.Random(i)
    return " ".join(f"w{rng.randrange(300)}" for _ in range(60))


def tiny_dataset(root: Path) -> Dict[str, Path]:
    texts = {f"d{i:02d}": corpus_text(i) for i in range(12)}
    words = texts["d01"].split()
    words[5], words[30] = "reworded", "again"
    texts["dcopy"] = " ".join(words)  # a near copy of d01, q4's positive
    corpus = write_jsonl(root / "corpus.jsonl", [{"_id": k, "title": "", "text": v} for k, v in texts.items()])
    queries = write_jsonl(root / "queries.jsonl", [
        {"_id": "q1", "text": "Obesity reduces life quality in adults with type 2 diabetes."},  # near copy of eval e1
        {"_id": "q2", "text": " ".join(texts["d02"].split()[:6])},
        {"_id": "q3", "text": EVAL_QUERIES["t9"]},  # same text as the eval dataset's TRAIN query: kept
        {"_id": "q4", "text": " ".join(texts["d01"].split()[:8])},
    ])
    qrels = root / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td04\t1\nq2\td02\t1\nq2\td06\t1\nq3\td03\t1\nq4\td01\t1\n")
    return {"corpus": corpus, "queries": queries, "qrels": qrels, "eval": beir_eval(root / "eval")}


def mine_tiny(data: Dict[str, Path], out: Path, *extra: str) -> Dict[str, Any]:
    return mine.run(["--corpus", str(data["corpus"]), "--queries", str(data["queries"]), "--qrels", str(data["qrels"]),
                     "--output", str(out), "--work_dir", str(out.parent / "work"), "--negatives", "bm25:3/top,random:3",
                     "--seed", "5", *extra])


def rows_of(out: Path) -> List[Dict[str, Any]]:
    import pyarrow.parquet as pq
    return [r for f in sorted(out.glob("triples-*.parquet")) for r in pq.read_table(f).to_pylist()]


def read_lines(pattern: str, out: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for f in sorted(out.glob(pattern)) for line in f.read_text().splitlines() if line.strip()]


def test_mine_with_the_guard_the_near_duplicate_filter_and_the_audit_sample(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    plain_stats = mine_tiny(data, tmp_path / "plain")
    plain = rows_of(tmp_path / "plain")
    negatives_of = lambda rows, q: {n["doc_id"] for r in rows if r["query_id"] == q for n in r["negatives"]}  # noqa: E731
    # without the options the leaks are there, and nothing new is written or counted
    assert {r["query_id"] for r in plain} == {"q1", "q2", "q3", "q4"}
    assert "d06" in {r["positive"]["doc_id"] for r in plain} and "dcopy" in negatives_of(plain, "q4")
    assert not list((tmp_path / "plain").glob("leakage-*")) and not list((tmp_path / "plain").glob("audit*"))
    assert "leakage" not in plain_stats["counters"] and "near_duplicate_of_positive" not in plain_stats["counters"].get("filter", {})

    stats = mine_tiny(data, tmp_path / "guarded", "--exclude_eval", str(data["eval"]), "--dup_jaccard", "0.5", "--audit_sample", "4")
    rows = rows_of(tmp_path / "guarded")
    assert {(r["query_id"], r["positive"]["doc_id"]) for r in rows} == {("q2", "d02"), ("q3", "d03"), ("q4", "d01")}
    written = {n["doc_id"] for r in rows for n in r["negatives"]}
    assert not written & {"d05", "d06"} and "dcopy" not in negatives_of(rows, "q4")
    asked = {(r["query_id"], r["positive"]["doc_id"]): len(r["negatives"]) for r in plain}
    assert all(len(r["negatives"]) == asked[r["query_id"], r["positive"]["doc_id"]] for r in rows)  # removed candidates were replaced
    c = stats["counters"]
    assert c["leakage"][QUERY_NEAR] == 1 and c["leakage"][POSITIVE_JUDGED] == 1 and c["leakage"][NEGATIVE_JUDGED] > 0
    assert c["filter"]["near_duplicate_of_positive"] >= 1 and c["filter"]["near_duplicate_of_positive_random"] >= 1
    report = read_lines("leakage-*.jsonl", tmp_path / "guarded")
    assert {e["reason"] for e in report} == {QUERY_NEAR, POSITIVE_JUDGED, NEGATIVE_JUDGED}
    assert sum(e["reason"] == NEGATIVE_JUDGED for e in report) == c["leakage"][NEGATIVE_JUDGED]
    (q1,) = [e for e in report if e["reason"] == QUERY_NEAR]
    assert q1["query_id"] == "q1" and q1["eval"][0]["query_id"] == "e1" and q1["eval"][0]["query"] == EVAL_QUERIES["e1"]
    # the audit sample: per stratum min(N, population) of the written negatives, populations summing to all of them
    sample, strata = read_lines("audit-*.jsonl", tmp_path / "guarded"), read_lines("audit_strata-*.jsonl", tmp_path / "guarded")
    assert sum(s["population"] for s in strata) == sum(len(r["negatives"]) for r in rows)
    assert all(s["sampled"] == min(4, s["population"]) for s in strata) and len(sample) == sum(s["sampled"] for s in strata)
    assert all(s["label"] is None and s["passage"] and s["query"] for s in sample)
    assert {s["stratum"] for s in strata} == {"bm25/1-10", "random/unranked"}
    # labelled (every sampled negative a true negative), estimated, and shown by the run report
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"audit_id": s["audit_id"], "label": 0}) + "\n" for s in sample))
    assert audit.main([str(tmp_path / "guarded"), "--labels", str(labels)]) == 0
    page = Path(write_report(str(tmp_path / "guarded"))).read_text()
    assert "False negatives left (audit sample)" in page and f"leakage: {QUERY_NEAR}" in page
    assert "filter: near_duplicate_of_positive (candidates removed)" in page


@pytest.mark.slow
def test_scifact_train_mined_with_its_test_split_excluded(scifact, tmp_path):
    """SciFact itself: nothing judged for a test query is written, and every training query SciFact
    shares with its test split (it has some: claims and their negations, even exact copies) is gone."""
    test_docs = {line.split("\t")[1] for line in (scifact / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    stats = mine.run(["--corpus", str(scifact / "corpus.jsonl"), "--queries", str(scifact / "queries.jsonl"),
                      "--qrels", str(scifact / "qrels" / "train.tsv"), "--output", str(tmp_path / "out"),
                      "--work_dir", str(tmp_path / "work"), "--negatives", "bm25:3@1-50,random:1", "--exclude_eval", str(scifact),
                      "--dup_jaccard", "0.4"])
    rows = rows_of(tmp_path / "out")
    assert rows and not {r["positive"]["doc_id"] for r in rows} & test_docs
    assert not {n["doc_id"] for r in rows for n in r["negatives"]} & test_docs
    c = stats["counters"]["leakage"]
    assert c["eval_queries"] == 300 and c[QUERY_EXACT] >= 1 and c[QUERY_NEAR] >= 10
    report = read_lines("leakage-*.jsonl", tmp_path / "out")
    dropped = {e["query_id"] for e in report if e["reason"] in (QUERY_EXACT, QUERY_NEAR)}
    assert len(dropped) == c[QUERY_EXACT] + c[QUERY_NEAR] and not dropped & {r["query_id"] for r in rows}
    assert stats["queries_with_positive"] == 809  # counted before the guard; the guard's drops are its own counters
