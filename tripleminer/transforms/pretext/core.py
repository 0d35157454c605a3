"""What every pair generator shares: names, RNG derivation, pair counts, record layout, the driver,
and cutting runs of words out of a text.

A generator is a `Recipe`: how to cut a document into units once, and how to draw one pair from
them. `generate` runs a recipe over a document with one derived RNG per pair, so each pair depends
only on (seed, source, doc id, pair index), never on bundle order, parallelism or the hash salt.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Sequence, Tuple, Union

from tripleminer.seeding import stable_seed
from tripleminer.transforms.common import candidates
from tripleminer.transforms.positives import positive

ICT, CROP, SPAN, TITLE, SALIENT, NEIGHBORS = "ict", "crop", "span", "title", "salient", "neighbors"
SAME_DOC, AUGMENT = "same_doc", "augment"
METRICS_NAMESPACE = "pretext"

Doc = Mapping[str, Any]
Record = Dict[str, Any]
Span = Tuple[str, ...]  # a run of words, as span keys


def derive_rng(seed: int, source: str, doc_id: str, index: Union[int, str]) -> random.Random:
    """The RNG of one pair: a function of its identity only, never of what ran before it.

    `random.Random` rather than numpy's: the generators make many scalar draws, each ~20x cheaper.
    """
    return random.Random(stable_seed(seed, source, doc_id, index))


def pair_count(rate: float, seed: int, source: str, doc_id: str) -> int:
    """How many pairs a document yields: floor(rate), plus one more with probability frac(rate)."""
    whole = int(rate)
    extra = derive_rng(seed, source, doc_id, "count").random() < rate - whole
    return whole + int(extra)


class Skip(Exception):
    """A document (or one of its pairs) that cannot give a pair; the message is the counter name."""


class Draw(NamedTuple):
    """One drawn pair, before it is laid out as a query record."""

    query: str
    positive: str
    title: str
    negatives: Sequence[Tuple[int, str]] = ()  # (passage index, passage text) of the same document


class Recipe(NamedTuple):
    """What differs between generators: cutting a document into units, and drawing one pair."""

    source: str
    prepare: Callable[[Doc, Any], Any]
    draw: Callable[[Doc, Any, random.Random, Any], Draw]


def _record(source: str, doc: Doc, k: int, draw: Draw) -> Record:
    doc_id = doc["doc_id"]
    pos = positive(doc_id, source, title=draw.title, text=draw.positive)
    pools = []
    if draw.negatives:
        ids = [f"{doc_id}#p{i}" for i, _ in draw.negatives]
        texts = [text for _, text in draw.negatives]
        pools.append(candidates(SAME_DOC, ids, titles=[draw.title] * len(ids), texts=texts))
    return {"query_id": f"{source}:{doc_id}:{k}", "query": draw.query, "positives": [pos],
            "candidates": pools}


def generate(recipe: Recipe, doc: Doc, seed: int, config: Any) -> Tuple[List[Record], List[str]]:
    """Pairs of one document and the reasons of whatever was skipped (for the counters)."""
    count = pair_count(config.rate, seed, recipe.source, doc["doc_id"])
    if count == 0:
        return [], []
    try:
        units = recipe.prepare(doc, config)
    except Skip as skip:
        return [], [str(skip)]
    pairs, skipped = [], []
    for k in range(count):
        try:
            draw = recipe.draw(doc, units, derive_rng(seed, recipe.source, doc["doc_id"], k), config)
        except Skip as skip:
            skipped.append(str(skip))
        else:
            pairs.append(_record(recipe.source, doc, k, draw))
    return pairs, skipped


def word_run(text: str, offsets: Sequence[Tuple[int, int]], start: int, length: int) -> str:
    """Words `start` to `start + length` of `text` (their `text_units.word_offsets`), cut from the
    original so the spacing is kept and the run is an exact substring."""
    return text[offsets[start][0] : offsets[start + length - 1][1]]


def find_span(keys: Sequence[str], span: Span) -> List[int]:
    """Start of every occurrence of `span` in `keys`."""
    n = len(span)
    return [i for i in range(len(keys) - n + 1) if tuple(keys[i : i + n]) == span]


def without_span(words: List[str], keys: List[str], span: Span) -> List[str]:
    """`words` with every occurrence of `span` (compared on `keys`) cut out, including any the cutting creates."""
    while True:
        found = find_span(keys, span)
        if not found:
            return words
        i = found[0]
        words, keys = words[:i] + words[i + len(span) :], keys[:i] + keys[i + len(span) :]


def check_prob(name: str, value: float) -> None:
    """Config checks run in `__post_init__`, so a bad option fails before the pipeline starts."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_rate(rate: float) -> None:
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
