"""ICT (Lee et al. 2019): a sentence is the query, the rest of its passage the positive."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List

from tripleminer.transforms import text_units
from tripleminer.transforms.pretext.core import ICT, Doc, Draw, Recipe, Record, Skip, check_prob, check_rate, generate


@dataclass(frozen=True)
class IctConfig:
    rate: float = 1.0  # pairs per passage
    query_in_block_prob: float = field(default=0.1, metadata={
        "help": "probability that the query sentence is left in the positive (Megatron's 0.1)."})

    def __post_init__(self) -> None:
        check_rate(self.rate)
        check_prob("query_in_block_prob", self.query_in_block_prob)


def _prepare(doc: Doc, config: IctConfig) -> List[str]:
    sentences = text_units.split_sentences(doc["text"])
    if len(sentences) < 2:
        raise Skip("too_few_sentences")
    return sentences


def _draw(doc: Doc, sentences: List[str], rng: random.Random, config: IctConfig) -> Draw:
    i = rng.randrange(len(sentences))
    # Both branches re-join sentences, so the positive's layout never tells whether the query was removed.
    block = sentences if rng.random() < config.query_in_block_prob else sentences[:i] + sentences[i + 1 :]
    return Draw(query=sentences[i], positive=" ".join(block), title=doc.get("title") or "")


RECIPE = Recipe(ICT, _prepare, _draw)


def ict_pairs(doc: Doc, seed: int, config: IctConfig = IctConfig()) -> List[Record]:
    """Inverse Cloze Task pairs of one passage; none if it has fewer than two sentences."""
    return generate(RECIPE, doc, seed, config)[0]
