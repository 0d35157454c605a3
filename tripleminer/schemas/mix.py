"""The negative-mix grammar shared by the miner and the trainer: `source:count[@start-end][/random|top]`.

No Beam or torch here, so both packages import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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


@dataclass(frozen=True)
class NegativeSource:
    """One row of the source table: what a negative source is, so validation, the sampler, the
    pipelines and the report all read the same facts instead of keeping their own lists.

    ranked: candidates carry 1-based ranks, so a rank window applies.
    hard: ranked near the query (counts against `max_hard`); the rest are easy.
    dense: scores are cosines of the bi-encoder, comparable with the positive's (positive-aware filter).
    origin: where the candidates come from: "corpus" (any pipeline, built by `transform`), "log"
        (the query log's impressions; `mine` only), "pair" (travel inside pretext records; `pretext` only).
    transform: "module:function" building the candidate lists, `function(inputs, mix)`
        (see `tripleminer.transforms.candidates`); None where the candidates travel in the records.
    """

    name: str
    ranked: bool
    hard: bool
    dense: bool = False
    origin: str = "corpus"
    transform: Optional[str] = None
    help: str = ""


SOURCES: Dict[str, NegativeSource] = {s.name: s for s in (
    NegativeSource("impression", ranked=True, hard=True, origin="log",
                   transform="tripleminer.transforms.negatives:impression_candidates",
                   help="shown for the query, never clicked (needs --query_log)"),
    NegativeSource("bm25", ranked=True, hard=True, transform="tripleminer.transforms.retrieval:bm25_candidates",
                   help="BM25 ranking of the query minus its positives"),
    NegativeSource("ann", ranked=True, hard=True, dense=True, transform="tripleminer.transforms.retrieval:ann_candidates",
                   help="dense ranking of --model, e.g. ann:2@101-500"),
    NegativeSource("same_doc", ranked=False, hard=True, origin="pair",
                   help="passages of a span pair's document that lack its span (pretext span pairs only)"),
    NegativeSource("gold", ranked=False, hard=False, transform="tripleminer.transforms.negatives:gold_candidates",
                   help="positives of other queries"),
    NegativeSource("random", ranked=False, hard=False, transform="tripleminer.transforms.negatives:random_candidates",
                   help="uniform from the corpus"),
)}
RANKED_SOURCES = tuple(s.name for s in SOURCES.values() if s.ranked)
HARD_SOURCES = tuple(s.name for s in SOURCES.values() if s.hard)
DENSE_SOURCES = tuple(s.name for s in SOURCES.values() if s.dense)


def offered_sources(origin: str) -> Tuple[str, ...]:
    """The sources a pipeline whose own candidates come from `origin` ("log" or "pair") can mix."""
    return tuple(s.name for s in SOURCES.values() if s.origin in ("corpus", origin))
