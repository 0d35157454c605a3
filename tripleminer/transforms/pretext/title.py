"""Title (AugTriever's structural pseudo-query, Meng et al. 2022): the title is the query, the body the positive."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Tuple

from tripleminer.transforms.pretext.core import TITLE, Doc, Draw, Recipe, Record, Skip, check_prob, generate


@dataclass(frozen=True)
class TitleConfig:
    # A document has one title, so one pair at most: a higher rate would only repeat it.
    rate: float = 1.0  # pairs per document, in [0, 1]

    def __post_init__(self) -> None:
        check_prob("rate", self.rate)


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _prepare(doc: Doc, config: TitleConfig) -> Tuple[str, str]:
    title, text = doc.get("title") or "", doc["text"]
    if not title.strip():
        raise Skip("no_title")
    if not text.strip():
        raise Skip("no_text")
    if _normalised(title) == _normalised(text):  # the pair would be the document with itself
        raise Skip("title_is_text")
    return title, text


def _draw(doc: Doc, title_text: Tuple[str, str], rng: random.Random, config: TitleConfig) -> Draw:
    title, text = title_text
    # The positive has no title: with it, the query would be a verbatim part of the positive.
    return Draw(query=title, positive=text, title="")


RECIPE = Recipe(TITLE, _prepare, _draw)


def title_pairs(doc: Doc, seed: int, config: TitleConfig = TitleConfig()) -> List[Record]:
    """The (title, body) pair of one document; none if the title is empty or the same text as the body."""
    return generate(RECIPE, doc, seed, config)[0]
