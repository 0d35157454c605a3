"""Small helpers for the fast transform tests: run a hand-built pipeline on the in-memory
DirectRunner, read its counters back, and build the records the transforms take.

Kept apart from conftest.py so the transform tests import only what they use (no shared data, no
models) and each one stays a few seconds.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from tripleminer.transforms.positives import positive

Counters = Dict[str, Dict[str, int]]


def direct_pipeline() -> beam.Pipeline:
    """A pipeline on the in-memory DirectRunner (FnApiRunner): the runner every fast test uses."""
    return beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))


def counters(result: PipelineResult) -> Counters:
    """Counters by namespace and name, summed over steps: what the transforms under test counted."""
    out: Dict[str, Dict[str, int]] = defaultdict(dict)
    for c in result.metrics().query()["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        ns, name = c.key.metric.namespace, c.key.metric.name
        out[ns][name] = out[ns].get(name, 0) + int(value or 0)
    return dict(out)


def run(build: Callable[[beam.Pipeline], None]) -> Counters:
    """Build a pipeline with `build` (which adds its own `assert_that`s), run it to the end and
    return its counters, so a test can check both the outputs and what was counted."""
    p = direct_pipeline()
    build(p)
    result = p.run()
    result.wait_until_finish()
    return counters(result)


def singleton(p: beam.Pipeline, label: str, value: Any) -> beam.pvalue.AsSingleton:
    """A side input holding `value` (e.g. the corpus doc ids, as the pipelines pass them)."""
    return beam.pvalue.AsSingleton(p | label >> beam.Create([value]))


def query_record(query_id: str, positive_ids: Sequence[str], query: Optional[str] = None) -> Dict[str, Any]:
    """A query record as `QueryRecords` emits it: the input every candidate source works from."""
    return {"query_id": query_id, "query": query or f"query {query_id}",
            "positives": [positive(d, "qrel", label=1.0) for d in positive_ids], "candidates": []}

