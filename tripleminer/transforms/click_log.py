"""Aggregate a query log into per-(query, document) click statistics.

Both click positives and non-click impression negatives are read off these statistics, so the log
is scanned once and the two can never disagree about what was clicked.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

PairStats = Dict[str, int]  # {"clicks", "impressions", "best_rank"}


class _SessionPairs(beam.DoFn):
    def __init__(self) -> None:
        self.sessions = Metrics.counter("log", "sessions")
        self.no_click = Metrics.counter("log", "sessions_without_click")
        self.no_impression = Metrics.counter("log", "sessions_without_impressions")
        self.click_not_shown = Metrics.counter("log", "clicks_not_in_impressions")

    def process(self, session: Dict[str, Any]) -> Iterator[Tuple[Tuple[str, str], PairStats]]:
        self.sessions.inc()
        qid, clicks = session["query_id"], set(session["clicks"])
        if not clicks:
            self.no_click.inc()
        if not session["impressions"]:
            self.no_impression.inc()
        seen = set()
        for rank, doc_id in enumerate(session["impressions"], start=1):
            if doc_id in seen:  # a document listed twice in one page counts once, at its best rank
                continue
            seen.add(doc_id)
            yield (qid, doc_id), {"clicks": int(doc_id in clicks), "impressions": 1, "best_rank": rank}
        # A click on a document missing from the impressions still means it was shown.
        for doc_id in sorted(clicks - seen):
            self.click_not_shown.inc()
            yield (qid, doc_id), {"clicks": 1, "impressions": 1, "best_rank": 0}


def merge_stats(stats: Any) -> PairStats:
    """Sum clicks and impressions; keep the best (smallest non-zero) rank. Associative for CombinePerKey."""
    out = {"clicks": 0, "impressions": 0, "best_rank": 0}
    for s in stats:
        out["clicks"] += s["clicks"]
        out["impressions"] += s["impressions"]
        ranks = [r for r in (out["best_rank"], s["best_rank"]) if r > 0]
        out["best_rank"] = min(ranks) if ranks else 0
    return out


class AggregateClicks(beam.PTransform):
    """Sessions -> ((query_id, doc_id), {clicks, impressions, best_rank}) over the whole log."""

    def expand(self, sessions: beam.PCollection) -> beam.PCollection:
        return (
            sessions
            | "SessionPairs" >> beam.ParDo(_SessionPairs())
            | "SumPerPair" >> beam.CombinePerKey(merge_stats)
        )
