"""Neighbors (CPT, Neelakantan et al. 2022): two adjacent chunks of a document are a positive pair."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Tuple

from tripleminer.transforms import text_units
from tripleminer.transforms.pretext.core import NEIGHBORS, Doc, Draw, Recipe, Record, Skip, check_rate, generate, word_run


@dataclass(frozen=True)
class NeighborsConfig:
    rate: float = 1.0  # pairs per document
    chunk_words: int = field(default=64, metadata={
        "help": "length of each of the two adjacent chunks, in words; documents shorter than two chunks are skipped (counted)."})

    def __post_init__(self) -> None:
        check_rate(self.rate)
        if self.chunk_words < 1:
            raise ValueError(f"chunk_words must be >= 1, got {self.chunk_words}")


def _prepare(doc: Doc, config: NeighborsConfig) -> List[Tuple[int, int]]:
    offsets = text_units.word_offsets(doc["text"])
    if len(offsets) < 2 * config.chunk_words:
        raise Skip("too_few_words")
    return offsets


def _draw(doc: Doc, offsets: List[Tuple[int, int]], rng: random.Random, config: NeighborsConfig) -> Draw:
    n, text = config.chunk_words, doc["text"]
    start = rng.randint(0, len(offsets) - 2 * n)
    first, second = word_run(text, offsets, start, n), word_run(text, offsets, start + n, n)
    # Either chunk may be the query, as CPT's pairs are symmetric; no title, as in crop.
    query, positive = (first, second) if rng.random() < 0.5 else (second, first)
    return Draw(query=query, positive=positive, title="")


RECIPE = Recipe(NEIGHBORS, _prepare, _draw)


def neighbors_pairs(doc: Doc, seed: int, config: NeighborsConfig = NeighborsConfig()) -> List[Record]:
    """Pairs of adjacent, disjoint `chunk_words`-word chunks of one document; none if it is shorter than two."""
    return generate(RECIPE, doc, seed, config)[0]
