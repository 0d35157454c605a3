"""Recurring spans (Spider, Ram et al. 2021): two passages of a document sharing an n-gram."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, NamedTuple, Set, Tuple

from tripleminer.transforms import text_units
from tripleminer.transforms.pretext.core import (SPAN, Doc, Draw, Recipe, Record, Skip, Span, check_prob, check_rate, find_span,
                                                 generate, without_span)


@dataclass(frozen=True)
class SpanConfig:
    rate: float = 1.0  # pairs per document
    passage_words: int = field(default=100, metadata={
        "help": "documents are cut into passages of this many words (DPR's 100); a one-passage document is skipped."})
    max_span_words: int = field(default=10, metadata={"help": "longest recurring span, in words."})
    query_window_words: int = field(default=30, metadata={
        "help": "the query is a window of this many words around the span."})
    keep_answer_prob: float = field(default=0.5, metadata={
        "help": "probability that the span stays in the query (Spider's 0.5); otherwise it is cut out."})

    def __post_init__(self) -> None:
        check_rate(self.rate)
        check_prob("keep_answer_prob", self.keep_answer_prob)
        if min(self.passage_words, self.max_span_words, self.query_window_words) < 1:
            raise ValueError("passage_words, max_span_words and query_window_words must be >= 1")


class _Units(NamedTuple):
    passages: List[List[str]]  # words of each passage
    keys: List[List[str]]  # the same words as spans compare them
    spans: List[Tuple[Span, Tuple[int, ...]]]  # each recurring span and the passages holding it


def split_passages(text: str, passage_words: int) -> List[List[str]]:
    """Consecutive chunks of `passage_words` words (the last one shorter), as DPR cuts Wikipedia."""
    tokens = text_units.words(text)
    return [tokens[i : i + passage_words] for i in range(0, len(tokens), passage_words)]


def is_valid_span(span: Span) -> bool:
    """Spider/Splinter filters: content words at both ends; a lone word must be a name or a number."""
    if not (text_units.is_content(span[0]) and text_units.is_content(span[-1])):
        return False
    return len(span) > 1 or text_units.is_capitalised(span[0]) or text_units.is_number(span[0])


def _sub_spans(span: Span) -> Iterator[Span]:
    n = len(span)
    return (span[i:j] for i in range(n) for j in range(i + 1, n + 1) if j - i < n)


def recurring_spans(keys: List[List[str]], max_span_words: int) -> Dict[Span, Tuple[int, ...]]:
    """Valid spans found in two or more passages, with those passages.

    A span is dropped when a longer valid span containing it sits in exactly the same passages:
    it adds no new pair, and would make long shared phrases dominate the draw.
    """
    # Grow spans one word at a time from the positions whose shorter span already recurs (Apriori):
    # a span recurs only if its prefix does, and a span may only start on a content word.
    starts = [(p, i) for p, passage in enumerate(keys) for i, key in enumerate(passage)
              if text_units.is_content(key)]
    recurring: Dict[Span, Tuple[int, ...]] = {}
    for n in range(1, max_span_words + 1):
        holders: Dict[Span, Set[int]] = defaultdict(set)
        for p, i in starts:
            holders[tuple(keys[p][i : i + n])].add(p)
        grown = {span for span, ps in holders.items() if len(ps) >= 2}
        recurring.update((span, tuple(sorted(holders[span]))) for span in grown if is_valid_span(span))
        starts = [(p, i) for p, i in starts if i + n < len(keys[p]) and tuple(keys[p][i : i + n]) in grown]
    redundant = {sub for span, ps in recurring.items() for sub in _sub_spans(span) if recurring.get(sub) == ps}
    return {span: ps for span, ps in sorted(recurring.items()) if span not in redundant}


def _prepare(doc: Doc, config: SpanConfig) -> _Units:
    passages = split_passages(doc["text"], config.passage_words)
    if len(passages) < 2:
        raise Skip("one_passage")
    keys = [[text_units.span_key(w) for w in passage] for passage in passages]
    spans = list(recurring_spans(keys, config.max_span_words).items())
    if not spans:
        raise Skip("no_recurring_span")
    return _Units(passages, keys, spans)


def _query_window(words: List[str], keys: List[str], span: Span, rng: random.Random,
                  config: SpanConfig) -> Tuple[List[str], List[str]]:
    """A random window of `query_window_words` words that contains one occurrence of the span."""
    start = rng.choice(find_span(keys, span))
    end = start + len(span)
    width = min(len(words), max(config.query_window_words, len(span)))
    left = rng.randint(max(0, end - width), min(start, len(words) - width))
    return words[left : left + width], keys[left : left + width]


def _draw(doc: Doc, units: _Units, rng: random.Random, config: SpanConfig) -> Draw:
    span, holders = rng.choice(units.spans)
    q, p = rng.sample(holders, 2)
    words, keys = _query_window(units.passages[q], units.keys[q], span, rng, config)
    if rng.random() >= config.keep_answer_prob:
        words = without_span(words, keys, span)
    if not words:
        raise Skip("empty_query")
    negatives = [(i, " ".join(units.passages[i])) for i in range(len(units.passages)) if i not in holders]
    return Draw(query=" ".join(words), positive=" ".join(units.passages[p]), title=doc.get("title") or "",
                negatives=negatives)


RECIPE = Recipe(SPAN, _prepare, _draw)


def span_pairs(doc: Doc, seed: int, config: SpanConfig = SpanConfig()) -> List[Record]:
    """Recurring-span pairs of one document, with its passages lacking the span as `same_doc` candidates."""
    return generate(RECIPE, doc, seed, config)[0]
