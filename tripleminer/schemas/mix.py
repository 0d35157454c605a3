"""The negative-mix grammar shared by the miner and the trainer: `source:count[@start-end][/random|top]`.

No Beam or torch here, so both packages import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

STRATEGIES = ("random", "top")
_SPEC = re.compile(r"^(?P<source>[a-z][a-z0-9_]*):(?P<count>\d+)(?:@(?P<start>\d+)-(?P<end>\d+))?(?:/(?P<strategy>[a-z]+))?$")


@dataclass(frozen=True)
class SourceMix:
    """How many negatives of one source a positive gets, from which part of its ranking, and how."""

    source: str
    count: int
    rank_start: Optional[int] = None  # 1-based, inclusive; None = no window
    rank_end: Optional[int] = None
    strategy: str = "random"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"{self.source}: unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.rank_start is not None and not (1 <= self.rank_start <= self.rank_end):
            raise ValueError(f"{self.source}: rank window {self.rank_start}-{self.rank_end} must satisfy 1 <= start <= end")

    def in_window(self, rank: Optional[int]) -> bool:
        """Inside the window; an unranked candidate is inside every window."""
        if self.rank_start is None or rank is None:
            return True
        return self.rank_start <= rank <= self.rank_end

    def __str__(self) -> str:
        window = "" if self.rank_start is None else f"@{self.rank_start}-{self.rank_end}"
        return f"{self.source}:{self.count}{window}/{self.strategy}"


def parse_mix(spec: str) -> List[SourceMix]:
    """Parse `"impression:2,bm25:4@1-100/top,random:1"`; an empty spec or `none` is no negatives."""
    if spec.strip().lower() in ("", "none"):
        return []
    mix = []
    for part in (p.strip() for p in spec.split(",")):
        m = _SPEC.match(part)
        if not m:
            raise ValueError(f"bad negative mix entry {part!r}: expected source:count[@start-end][/random|top]")
        window = (int(m["start"]), int(m["end"])) if m["start"] else (None, None)
        mix.append(SourceMix(m["source"], int(m["count"]), *window, strategy=m["strategy"] or "random"))
    sources = [m.source for m in mix]
    if len(set(sources)) != len(sources):
        raise ValueError(f"negative mix {spec!r} names a source twice")
    return mix
