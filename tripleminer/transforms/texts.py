"""Fill in document texts for positives and negatives with a shuffle join on doc id.

Rows carry only doc ids through sampling; texts are joined in at the end so no worker has to hold
the corpus text in memory. Slots that already carry a text (pretext passages) are left alone.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

POSITIVE_SLOT = -1


def row_key(row: Dict[str, Any]) -> str:
    return f"{row['query_id']}\x1f{row['positive']['doc_id']}"


def _slots(row: Dict[str, Any]) -> Iterator[Tuple[int, Dict[str, Any]]]:
    yield POSITIVE_SLOT, row["positive"]
    yield from enumerate(row["negatives"])


def _requests(row: Dict[str, Any]) -> Iterator[Tuple[str, Tuple[str, int]]]:
    key = row_key(row)
    for slot, doc in _slots(row):
        if doc.get("text") is None:
            yield doc["doc_id"], (key, slot)


class _Answer(beam.DoFn):
    def __init__(self) -> None:
        self.missing = Metrics.counter("texts", "doc_not_found")

    def process(self, element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Tuple[str, Tuple[int, str, str]]]:
        doc_id, joined = element
        if not joined["requests"]:
            return
        if not joined["doc"]:
            self.missing.inc(len(joined["requests"]))
            return
        doc = joined["doc"][0]
        for key, slot in joined["requests"]:
            yield key, (slot, doc["title"], doc["text"])


class _Fill(beam.DoFn):
    def __init__(self) -> None:
        self.dropped_negatives = Metrics.counter("texts", "negatives_dropped_without_text")
        self.dropped_rows = Metrics.counter("texts", "rows_dropped_positive_without_text")

    def process(self, element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Dict[str, Any]]:
        _, joined = element
        (row,) = joined["row"]
        answers = {slot: (title, text) for slot, title, text in joined["texts"]}
        for slot, doc in _slots(row):
            if doc.get("text") is None and slot in answers:
                doc["title"], doc["text"] = answers[slot]
        if row["positive"]["text"] is None:
            self.dropped_rows.inc()
            return
        kept = [n for n in row["negatives"] if n["text"] is not None]
        self.dropped_negatives.inc(len(row["negatives"]) - len(kept))
        row["negatives"] = kept
        yield row


class AttachTexts(beam.PTransform):
    """Rows with doc ids -> rows with titles and texts, joined against the corpus."""

    def __init__(self, docs: beam.PCollection) -> None:
        super().__init__()
        self.docs = docs

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        requests = rows | "Requests" >> beam.FlatMap(_requests)
        docs = self.docs | "KeyDocs" >> beam.Map(lambda d: (d["doc_id"], d))
        texts = (
            {"requests": requests, "doc": docs}
            | "JoinDocs" >> beam.CoGroupByKey()
            | "Answer" >> beam.ParDo(_Answer())
        )
        keyed_rows = rows | "KeyRows" >> beam.Map(lambda r: (row_key(r), r))
        return (
            {"row": keyed_rows, "texts": texts}
            | "JoinRows" >> beam.CoGroupByKey()
            | "Fill" >> beam.ParDo(_Fill())
        )
