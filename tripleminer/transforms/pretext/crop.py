"""Crop (Contriever, Izacard et al. 2021): two independent random spans of the same passage."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Tuple

from tripleminer.transforms import text_units
from tripleminer.transforms.pretext.core import CROP, Doc, Draw, Recipe, Record, Skip, check_rate, generate, word_run


@dataclass(frozen=True)
class CropConfig:
    rate: float = 1.0  # pairs per passage
    # Crop lengths, as fractions of the passage's words: Contriever's defaults.
    ratio_min: float = field(default=0.1, metadata={
        "help": "shortest crop, as a fraction of the passage's words (Contriever's 0.1)."})
    ratio_max: float = field(default=0.5, metadata={
        "help": "longest crop, as a fraction of the passage's words (Contriever's 0.5)."})
    # A 10% crop of a shorter passage would be a single word.
    min_words: int = field(default=10, metadata={"help": "passages with fewer words are skipped (counted)."})

    def __post_init__(self) -> None:
        check_rate(self.rate)
        if not 0.0 < self.ratio_min <= self.ratio_max <= 1.0:
            raise ValueError(f"need 0 < ratio_min <= ratio_max <= 1, got {self.ratio_min}, {self.ratio_max}")
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")


def _prepare(doc: Doc, config: CropConfig) -> List[Tuple[int, int]]:
    offsets = text_units.word_offsets(doc["text"])
    if len(offsets) < config.min_words:
        raise Skip("too_few_words")
    return offsets


def _random_crop(text: str, offsets: List[Tuple[int, int]], rng: random.Random, config: CropConfig) -> str:
    """A contiguous run of words, cut from the original text so its spacing is kept as is."""
    n = len(offsets)
    length = max(1, int(n * rng.uniform(config.ratio_min, config.ratio_max)))
    return word_run(text, offsets, rng.randint(0, n - length), length)


def _draw(doc: Doc, offsets: List[Tuple[int, int]], rng: random.Random, config: CropConfig) -> Draw:
    query = _random_crop(doc["text"], offsets, rng, config)
    # No title: both views are bare crops, so the title cannot give the match away.
    return Draw(query=query, positive=_random_crop(doc["text"], offsets, rng, config), title="")


RECIPE = Recipe(CROP, _prepare, _draw)


def crop_pairs(doc: Doc, seed: int, config: CropConfig = CropConfig()) -> List[Record]:
    """Independent-cropping pairs of one passage; none if it has fewer than `min_words` words."""
    return generate(RECIPE, doc, seed, config)[0]
