"""Positives (transforms/positives.py) on hand-built labels: click and qrel thresholds, and
QueryRecords' join of positives with query texts, where every query ends in exactly one named
outcome and every positive on an unknown document is a dead letter with its reason."""

from __future__ import annotations

import json
from typing import Any, Dict

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import run, singleton
from tripleminer.transforms.positives import ClickPositives, QrelPositives, QueryRecords, click_confidence, merge_positives, positive

CORPUS = ["d1", "d2", "d3", "d4", "d5"]


def qrel(doc_id: str, label: float) -> Dict[str, Any]:
    return positive(doc_id, "qrel", label=label)


def click(doc_id: str, clicks: int, impressions: int) -> Dict[str, Any]:
    return positive(doc_id, "click", clicks=clicks, impressions=impressions, ctr=clicks / impressions,
                    confidence=click_confidence(clicks, impressions))


def unknown_doc(qid: str, doc_id: str) -> Dict[str, str]:
    return {"input": "positives", "file": "", "reason": f"doc_id {doc_id!r} is not in the corpus",
            "raw": json.dumps({"query_id": qid, "doc_id": doc_id})}


def test_click_and_qrel_thresholds():
    pair_stats = [
        (("q", "a"), {"clicks": 0, "impressions": 4, "best_rank": 1}),  # never clicked: an impression negative, not counted
        (("q", "b"), {"clicks": 1, "impressions": 1, "best_rank": 1}),  # below min_clicks
        (("q", "c"), {"clicks": 2, "impressions": 5, "best_rank": 2}),  # ctr 0.4 below min_ctr
        (("q", "d"), {"clicks": 3, "impressions": 4, "best_rank": 1}),
    ]
    qrels = [{"query_id": "q", "doc_id": "x", "score": 0.0}, {"query_id": "q", "doc_id": "y", "score": 1.0},
             {"query_id": "r", "doc_id": "z", "score": 2.0}]

    def build(p: beam.Pipeline) -> None:
        clicks = p | "Stats" >> beam.Create(pair_stats) | ClickPositives(min_clicks=2, min_ctr=0.5)
        assert_that(clicks, equal_to([("q", click("d", 3, 4))]), label="Clicks")
        judged = p | "Qrels" >> beam.Create(qrels) | QrelPositives(min_score=1.0)
        assert_that(judged, equal_to([("q", qrel("y", 1.0)), ("r", qrel("z", 2.0))]), label="Qrels")

    assert run(build)["positives"] == {"click_pairs": 1, "click_pairs_below_threshold": 2,
                                       "qrel_pairs": 2, "qrel_pairs_below_threshold": 1}


def test_merge_positives_keeps_one_row_with_every_sources_fields():
    merged = merge_positives([click("d1", 3, 4), qrel("d1", 1.0), qrel("d1", 2.0)])
    assert merged == dict(qrel("d1", 2.0), source="qrel+click", clicks=3, impressions=4, ctr=0.75)
    assert merge_positives([qrel("d1", 2.0), qrel("d1", 1.0), click("d1", 3, 4)]) == merged  # order does not matter


def test_query_records_join_texts_and_account_for_every_query():
    positives = [
        ("q1", qrel("d1", 1.0)), ("q1", qrel("d1", 2.0)), ("q1", click("d1", 3, 4)),  # one positive, "qrel+click"
        ("q1", qrel("d2", 1.0)), ("q1", qrel("ghost", 1.0)),                         # ghost: dead letter
        ("q2", click("d3", 1, 2)),                                                    # text from the log only
        ("q3", qrel("d4", 1.0)),                                                      # no text anywhere: dead letter
        ("q5", qrel("d5", 1.0)),                                                      # queries text beats log text
        ("q6", qrel("ghost2", 1.0)),                                                  # no text, only an unknown doc
        ("q7", qrel("ghost3", 1.0)),                                                  # text, only an unknown doc
    ]
    texts = [("q1", "query one"), ("q4", "no labels"), ("q5", "file text"), ("q7", "seven")]
    log_texts = [("q2", "log b"), ("q2", "log a"), ("q5", "log text")]

    def build(p: beam.Pipeline) -> None:
        out = {
            "positives": p | "Positives" >> beam.Create(positives),
            "text": p | "Texts" >> beam.Create(texts),
            "log_text": p | "LogTexts" >> beam.Create(log_texts),
        } | QueryRecords(singleton(p, "CorpusIds", CORPUS))
        assert_that(out["records"], equal_to([
            {"query_id": "q1", "query": "query one", "candidates": [],
             "positives": [dict(qrel("d1", 2.0), source="qrel+click", clicks=3, impressions=4, ctr=0.75), qrel("d2", 1.0)]},
            {"query_id": "q2", "query": "log a", "positives": [click("d3", 1, 2)], "candidates": []},  # smallest log text
            {"query_id": "q5", "query": "file text", "positives": [qrel("d5", 1.0)], "candidates": []},
        ]), label="Records")
        assert_that(out["dead"], equal_to([
            unknown_doc("q1", "ghost"), unknown_doc("q6", "ghost2"), unknown_doc("q7", "ghost3"),
            {"input": "queries", "file": "", "reason": "query 'q3' has positives but no text in queries or log",
             "raw": json.dumps({"query_id": "q3"})},
        ]), label="Dead")

    c = run(build)
    assert c["queries"] == {"with_positive": 3, "without_positive": 2, "no_text_dead_letter": 1,
                            "no_text_and_only_unknown_docs": 1}  # 7 query ids, one outcome each
    assert c["positives"] == {"unknown_doc_dead_letter": 3, "pairs_of_query_without_text": 1}
