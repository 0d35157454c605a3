"""AttachTexts (transforms/texts.py) on hand-built rows: every slot without a text gets its
document's title and text, slots that carry their own text (pretext passages) keep it, a negative
whose document is missing is dropped and a row whose positive is missing is dropped, both counted."""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import run
from tripleminer.transforms.texts import AttachTexts

DOCS = [{"doc_id": f"d{i}", "title": f"title {i}", "text": f"text {i}"} for i in range(1, 6)]


def slot(doc_id: str, source: str, title: Optional[str] = None, text: Optional[str] = None) -> Dict[str, Any]:
    return {"doc_id": doc_id, "title": title, "text": text, "source": source, "rank": None, "score": None}


def filled(doc_id: str, source: str) -> Dict[str, Any]:
    n = doc_id[1:]
    return slot(doc_id, source, f"title {n}", f"text {n}")


def row(qid: str, positive: Dict[str, Any], negatives: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"query_id": qid, "query": f"query {qid}", "positive": positive, "negatives": negatives}


ROWS = [
    row("q1", slot("d1", "qrel"), [slot("d2", "bm25"), slot("missing", "random"), slot("pt-7", "same_doc", "", "own passage")]),
    row("q1", slot("d3", "qrel"), [slot("d2", "bm25")]),                     # same query, another positive, same negative
    row("q2", slot("gone", "qrel"), [slot("d4", "random")]),                 # positive not in the corpus: row dropped
    row("q3", slot("d5", "ict", "", "a pretext query's passage"), [slot("d1", "gold")]),  # positive keeps its own text
]


def test_texts_are_joined_in_and_rows_without_a_positive_text_dropped():
    def build(p: beam.Pipeline) -> None:
        docs = p | "Docs" >> beam.Create(DOCS)
        out = p | "Rows" >> beam.Create(copy.deepcopy(ROWS)) | AttachTexts(docs)
        assert_that(out, equal_to([
            row("q1", filled("d1", "qrel"), [filled("d2", "bm25"), slot("pt-7", "same_doc", "", "own passage")]),
            row("q1", filled("d3", "qrel"), [filled("d2", "bm25")]),
            row("q3", slot("d5", "ict", "", "a pretext query's passage"), [filled("d1", "gold")]),
        ]))

    assert run(build)["texts"] == {"doc_not_found": 2,  # "missing" (q1's row) and "gone" (q2's positive)
                                   "negatives_dropped_without_text": 1, "rows_dropped_positive_without_text": 1}
