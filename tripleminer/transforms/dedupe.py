"""Drop duplicate ids from corpus and query inputs, deterministically and visibly.

Exact copies collapse into one record (counted). Conflicting copies (same id, different content)
keep the smallest by content, so every run keeps the same one, and the others go to the
dead-letter output with the reason.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Iterator, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from tripleminer.io.readers import DEAD
from tripleminer.schemas.outputs import dead_letter


class _PickOne(beam.DoFn):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.unique = Metrics.counter("dedupe", f"{kind}_unique")
        self.exact = Metrics.counter("dedupe", f"{kind}_exact_duplicates")
        self.conflict = Metrics.counter("dedupe", f"{kind}_conflicting_duplicates")

    def process(self, element: Tuple[str, Iterable[Dict[str, Any]]]) -> Iterator[Any]:
        key, records = element
        ordered = sorted(records, key=lambda r: json.dumps(r, sort_keys=True))
        kept = ordered[0]
        self.unique.inc()
        yield kept
        for other in ordered[1:]:
            if other == kept:
                self.exact.inc()
            else:
                self.conflict.inc()
                yield beam.pvalue.TaggedOutput(
                    DEAD, dead_letter(self.kind, f"duplicate id {key!r} with different content", other)
                )


class DedupeById(beam.PTransform):
    """One record per `id_field`; returns `{"records", "dead"}` like the readers."""

    def __init__(self, kind: str, id_field: str) -> None:
        super().__init__(label=f"Dedupe {kind}")
        self.kind, self.id_field = kind, id_field

    def expand(self, records: beam.PCollection):
        picked = (
            records
            | "KeyById" >> beam.WithKeys(lambda r, f=self.id_field: r[f])
            | "GroupById" >> beam.GroupByKey()
            | "PickOne" >> beam.ParDo(_PickOne(self.kind)).with_outputs(DEAD, main="records")
        )
        return {"records": picked.records, "dead": picked.dead}
