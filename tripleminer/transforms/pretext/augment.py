"""Augmentation (word deletion, replacement and masking on either side of any pair) and the
corpus vocabulary sample that replacement words are drawn from."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Iterable, List, Sequence, Tuple

from tripleminer.transforms import text_units
from tripleminer.transforms.pretext.core import AUGMENT, Doc, Record, check_prob, derive_rng

SIDES = ("query", "positive")


@dataclass(frozen=True)
class AugmentConfig:
    """Every field but `sides` is the option --augment_<field>; `sides` is set by --augment."""

    deletion_prob: float = field(default=0.1, metadata={"help": "Probability that a word is deleted."})
    replacement_prob: float = field(default=0.1, metadata={
        "help": "Probability that a word is replaced by a word drawn from the corpus vocabulary sample."})
    masking_prob: float = field(default=0.1, metadata={
        "help": "Probability that a word is replaced by --augment_mask_token."})
    mask_token: str = field(default="[MASK]", metadata={"help": "The mask token."})
    sides: Tuple[str, ...] = ("query",)  # any of SIDES

    def __post_init__(self) -> None:
        for name in ("deletion_prob", "replacement_prob", "masking_prob"):
            check_prob(name, getattr(self, name))
        if self.deletion_prob + self.replacement_prob + self.masking_prob > 1.0:
            raise ValueError("deletion_prob + replacement_prob + masking_prob must be <= 1")
        if not set(self.sides) <= set(SIDES):
            raise ValueError(f"sides must be a subset of {SIDES}, got {self.sides}")


def augment_text(text: str, rng: random.Random, vocabulary: Sequence[str], config: AugmentConfig) -> str:
    """Each word is deleted, replaced by a vocabulary word or masked, each with its own probability.

    All probabilities zero returns `text` untouched; a text whose every word was deleted is kept whole,
    since an empty query or passage is not a training example.
    """
    p_delete = config.deletion_prob
    p_replace = p_delete + config.replacement_prob
    p_mask = p_replace + config.masking_prob
    if p_mask == 0.0:
        return text
    if config.replacement_prob > 0 and not vocabulary:
        raise ValueError("word replacement needs a non-empty vocabulary")
    out = []
    for word in text_units.words(text):
        u = rng.random()
        if u < p_delete:
            continue
        out.append(rng.choice(vocabulary) if u < p_replace else config.mask_token if u < p_mask else word)
    return " ".join(out) or text


def augment_pair(pair: Record, seed: int, vocabulary: Sequence[str],
                 config: AugmentConfig = AugmentConfig()) -> Record:
    """A copy of `pair` with the configured sides augmented; the RNG of each side is derived from the query id."""
    def rng(side: str, index: int = 0) -> random.Random:
        return derive_rng(seed, f"{AUGMENT}:{side}", pair["query_id"], index)

    out = dict(pair)
    if "query" in config.sides:
        out["query"] = augment_text(pair["query"], rng("query"), vocabulary, config)
    if "positive" in config.sides:
        out["positives"] = [{**pos, "text": augment_text(pos["text"], rng("positive", i), vocabulary, config)}
                            for i, pos in enumerate(pair["positives"])]
    return out


def keyed_words(doc: Doc, seed: int) -> List[Tuple[int, str]]:
    """Every word occurrence of a document with a random key that depends only on (seed, doc id, position):
    the sample is the occurrences with the smallest keys, whichever way the corpus is split or ordered."""
    rng = derive_rng(seed, "vocabulary", doc["doc_id"], 0)
    return [(rng.getrandbits(64), word) for word in text_units.letter_words(doc["text"])]


def vocabulary_sample(docs: Iterable[Doc], size: int, seed: int) -> List[str]:
    """`size` word occurrences drawn uniformly from the corpus (so frequent words come up more often),
    the same whatever the document order: the occurrences with the smallest keys (a bottom-k sample)."""
    keyed = (kw for doc in docs for kw in keyed_words(doc, seed))
    return [word for _, word in heapq.nsmallest(size, keyed)]
