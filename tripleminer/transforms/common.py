"""Helpers shared by the transforms: candidate lists, corpus ids, timing, progress."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence

import numpy as np
from apache_beam.metrics import Metrics

log = logging.getLogger("tripleminer.progress")


def candidates(
    source: str,
    doc_ids: Sequence[str],
    ranks: Optional[Sequence[int]] = None,
    scores: Optional[Sequence[float]] = None,
    titles: Optional[Sequence[str]] = None,
    texts: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """One source's candidate negatives for one query, column-wise (cheap to ship between stages).

    `ranks` are 1-based positions in the source's own ranking (None for unranked sources);
    `titles`/`texts` are given only where the text is not a corpus document's (pretext passages).
    """
    n = len(doc_ids)
    for name, col in (("ranks", ranks), ("scores", scores), ("titles", titles), ("texts", texts)):
        if col is not None and len(col) != n:
            raise ValueError(f"{source}: {name} has {len(col)} entries for {n} doc ids")
    return {
        "source": source,
        "doc_ids": list(doc_ids),
        "ranks": None if ranks is None else [int(r) for r in ranks],
        "scores": None if scores is None else [float(s) for s in scores],
        "titles": None if titles is None else list(titles),
        "texts": None if texts is None else list(texts),
    }


class CorpusIds:
    """The corpus's doc ids from a side input: a sorted array for sampling, a set for membership.

    Built once per worker (side inputs in the global window do not change between elements).
    """

    def __init__(self) -> None:
        self._source_id: Optional[int] = None
        self.sorted: np.ndarray = np.array([], dtype=object)
        self.members: FrozenSet[str] = frozenset()

    def load(self, ids: List[str]) -> "CorpusIds":
        if self._source_id != id(ids):
            self.sorted = np.array(sorted(ids), dtype=object)
            self.members = frozenset(ids)
            self._source_id = id(ids)
        return self


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the block's wall time to the `time/<stage>_ms` counter (busy time per stage in the stats)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        Metrics.counter("time", f"{stage}_ms").inc(int((time.perf_counter() - start) * 1000))


class Progress:
    """Logs a stage's running count from inside a DoFn, at most every `every_s` seconds, so long
    local runs show where they are (each worker logs its own share)."""

    def __init__(self, stage: str, unit: str, every_s: float = 15.0) -> None:
        self.stage, self.unit, self.every_s = stage, unit, every_s
        self.done = 0
        self.start = self.last = None

    def add(self, n: int = 1) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = self.last = now
        self.done += n
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s: %d %s so far (%.0f/s)", self.stage, self.done, self.unit, self.done / max(now - self.start, 1e-9))
