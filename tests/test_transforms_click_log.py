"""AggregateClicks (transforms/click_log.py) on a hand-built log: one statistic per (query, doc)
over all sessions, a document listed twice on a page counted once at its first rank, a click on a
document that was not listed still an impression (rank 0), and the best rank the smallest non-zero."""

from __future__ import annotations

from typing import Any, Dict, List

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import run
from tripleminer.transforms.click_log import AggregateClicks, merge_stats


def session(sid: str, qid: str, impressions: List[str], clicks: List[str]) -> Dict[str, Any]:
    return {"session_id": sid, "query_id": qid, "query": None, "timestamp": None, "impressions": impressions, "clicks": clicks}


def stats(clicks: int, impressions: int, best_rank: int) -> Dict[str, int]:
    return {"clicks": clicks, "impressions": impressions, "best_rank": best_rank}


SESSIONS = [
    session("s1", "q1", ["d1", "d2", "d1", "d3"], ["d2", "d9"]),  # d1 twice on one page; d9 clicked, not listed
    session("s2", "q1", ["d2", "d1"], ["d1"]),
    session("s3", "q2", [], []),                                    # neither impressions nor clicks
    session("s4", "q1", ["d3"], []),
    session("s5", "q2", [], ["d5"]),                                # a click without impressions: rank 0
    session("s6", "q2", ["d5"], []),                                # ... then shown at rank 1: best rank 1
]


def test_sessions_aggregate_to_per_pair_statistics():
    def build(p: beam.Pipeline) -> None:
        out = p | beam.Create(SESSIONS) | AggregateClicks()
        assert_that(out, equal_to([
            (("q1", "d1"), stats(1, 2, 1)),  # s1: rank 1 (its second listing at 3 ignored), s2: clicked at 2
            (("q1", "d2"), stats(1, 2, 1)),
            (("q1", "d3"), stats(0, 2, 1)),  # rank 4 in s1 (the duplicate keeps its position), 1 in s4
            (("q1", "d9"), stats(1, 1, 0)),  # never listed: no rank
            (("q2", "d5"), stats(1, 2, 1)),
        ]))

    assert run(build)["log"] == {"sessions": 6, "sessions_without_click": 3, "sessions_without_impressions": 2,
                                 "clicks_not_in_impressions": 2}


def test_merge_stats_sums_and_keeps_the_smallest_non_zero_rank_in_any_grouping():
    a, b, c = stats(1, 1, 0), stats(0, 1, 4), stats(2, 3, 2)
    assert merge_stats([a, b, c]) == stats(3, 5, 2)
    assert merge_stats([merge_stats([a, b]), c]) == merge_stats([a, merge_stats([b, c])]) == merge_stats([c, b, a])
    assert merge_stats([a]) == a and merge_stats([]) == stats(0, 0, 0)
