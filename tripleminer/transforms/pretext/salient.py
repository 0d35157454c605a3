"""Salient spans (AugTriever, Meng et al. 2022): a document's spans most salient to it are the
queries, the document the positive, with the span cut out with probability `remove_prob` (as ICT
cuts its sentence).

Candidates of each kind (sentences, word n-grams, random runs of words) are scored by a `Salience`:
BM25 of the span's terms against the document with corpus-wide statistics (`Bm25Salience`), or
the cosine of the bi-encoder's span and document vectors (`DenseSalience`). Each kind is ranked on
its own and the top spans are taken from the rankings in turn: a sentence and a three-word span
score on different scales (BM25 sums over a span's terms).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from tripleminer.encoders import Encoder, EncoderSettings, default_model
from tripleminer.index.bm25 import BM25Settings, CorpusStats, analyze
from tripleminer.transforms import text_units
from tripleminer.transforms.pretext.core import (SALIENT, Doc, Draw, Recipe, Record, Skip, check_prob, check_rate,
                                                 derive_rng, generate, without_span, word_run)
from tripleminer.transforms.pretext.span import is_valid_span

BM25, DENSE = "bm25", "dense"
SCORERS = (BM25, DENSE)
SENTENCE, NGRAM, RANDOM = "sentence", "ngram", "random"
SPAN_KINDS = (SENTENCE, NGRAM, RANDOM)

# (document text, candidate spans) -> one salience score per span, higher is more salient
Salience = Callable[[str, Sequence[str]], Sequence[float]]


@dataclass(frozen=True)
class SalientConfig:
    """`bm25` and `encoder` are no options: the pipeline passes its own --bm25_* and bi-encoder settings."""

    rate: float = 1.0  # pairs per document
    spans: int = field(default=3, metadata={
        "help": "each query is one of the document's this many most salient spans, taken in turn from each kind's ranking."})
    remove_prob: float = field(default=0.9, metadata={
        "help": "probability that the span (every occurrence) is cut out of the positive, as ICT cuts its sentence "
                "(Megatron's 1 - 0.1); otherwise the positive is the whole text."})
    span_kinds: str = field(default=",".join(SPAN_KINDS), metadata={
        "help": "candidate spans, comma-separated: sentence (each sentence), ngram (runs of min_words..max_words words "
                "that start and end on a content word), random (random runs of min_words..max_words words)."})
    min_words: int = field(default=2, metadata={"help": "shortest n-gram or random span, in words."})
    max_words: int = field(default=6, metadata={"help": "longest n-gram or random span, in words."})
    candidates: int = field(default=16, metadata={
        "help": "candidates of each kind scored per document: a seeded sample of that many sentences and n-grams "
                "(all if fewer), and that many random spans."})
    scorer: str = field(default=BM25, metadata={
        "help": "salience of a span to its document: bm25 (BM25 of the span's terms against the document, with "
                "corpus-wide document frequencies and the --bm25_stemmer, --bm25_k1, --bm25_b of the index) or dense "
                "(cosine of the bi-encoder's span and document vectors: --model, --precision, --encode_batch_size)."})
    bm25: BM25Settings = BM25Settings()  # analyzer, k1 and b of the bm25 scorer
    encoder: Optional[EncoderSettings] = None  # bi-encoder of the dense scorer; None: the default model

    def __post_init__(self) -> None:
        check_rate(self.rate)
        check_prob("remove_prob", self.remove_prob)
        if min(self.spans, self.candidates) < 1:
            raise ValueError("spans and candidates must be >= 1")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if not self.kinds or not set(self.kinds) <= set(SPAN_KINDS):
            raise ValueError(f"span_kinds must be some of {', '.join(SPAN_KINDS)}, got {self.span_kinds!r}")

    @property
    def kinds(self) -> Tuple[str, ...]:
        return tuple(k.strip() for k in self.span_kinds.split(",") if k.strip())

    def encoder_settings(self) -> EncoderSettings:
        """The dense scorer's bi-encoder: the pipeline's, or the default model outside a pipeline."""
        return self.encoder or EncoderSettings(default_model())


class Candidate(NamedTuple):
    """A run of words of the document: `length` words from word `start`."""

    kind: str
    start: int
    length: int


class _Units(NamedTuple):
    words: List[str]
    keys: List[str]  # the words as spans compare them (edge punctuation dropped)
    offsets: List[Tuple[int, int]]
    spans: List[Candidate]  # the most salient spans


def term_stats(docs: Iterable[Doc], stemmer: str) -> CorpusStats:
    """Document frequencies, count and length of the documents' texts, as `Bm25Salience` scores with them."""
    return CorpusStats.of(analyze([doc["text"] for doc in docs], stemmer))


def merge_stats(parts: Iterable[CorpusStats]) -> CorpusStats:
    return functools.reduce(CorpusStats.merge, parts, CorpusStats())


class Bm25Salience:
    """BM25 of each span, as a query, against its own document, with corpus-wide statistics: a span is
    salient when its terms are frequent in the document and rare in the corpus."""

    def __init__(self, stats: CorpusStats, settings: BM25Settings = BM25Settings()) -> None:
        self._stats, self._settings = stats, settings

    def _idf(self, term: str) -> float:  # Lucene's, as the bm25s index scores
        df = self._stats.df.get(term, 0)
        return math.log(1 + (self._stats.n_docs - df + 0.5) / (df + 0.5))

    def __call__(self, text: str, spans: Sequence[str]) -> List[float]:
        doc, *queries = analyze([text, *spans], self._settings.stemmer)
        k1, b = self._settings.k1, self._settings.b
        norm = k1 * (1 - b + b * len(doc) / (self._stats.avg_len or 1.0))
        weight: Dict[str, float] = {t: self._idf(t) * tf * (k1 + 1) / (tf + norm) for t, tf in Counter(doc).items()}
        return [sum(weight.get(t, 0.0) for t in set(query)) for query in queries]


class DenseSalience:
    """Cosine of each span's vector to the document's (the encoder's vectors are unit length).

    Each call holds one document's texts only, so its padding, hence its scores, never depend on
    which other documents share a batch or a bundle. The document is encoded apart from its spans,
    so no span is padded to the document's length in a shared forward batch.
    """

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder

    def __call__(self, text: str, spans: Sequence[str]) -> List[float]:
        document = self._encoder.encode([text])[0]
        return (self._encoder.encode(list(spans)) @ document).tolist() if spans else []


def _sentences(text: str) -> List[Tuple[int, int]]:
    """(start, length) in words of each sentence: sentences end at whitespace, so they cover whole words."""
    runs, start = [], 0
    for sentence in text_units.split_sentences(text):
        length = len(text_units.words(sentence))
        runs.append((start, length))
        start += length
    return runs


def _ngrams(keys: List[str], config: SalientConfig) -> List[Tuple[int, int]]:
    """Valid spans (`is_valid_span`, as Spider's) of min..max words; content words at both ends is the cheap
    necessary test, run first since most runs of a text fail it."""
    content = [text_units.is_content(key) for key in keys]
    return [(i, n) for n in range(config.min_words, config.max_words + 1) for i in range(len(keys) - n + 1)
            if content[i] and content[i + n - 1] and is_valid_span(tuple(keys[i : i + n]))]


def _random_runs(n_words: int, rng: random.Random, config: SalientConfig) -> List[Tuple[int, int]]:
    longest = min(config.max_words, n_words - 1)  # a proper part of the text
    if longest < config.min_words:
        return []
    lengths = [rng.randint(config.min_words, longest) for _ in range(config.candidates)]
    return [(rng.randint(0, n_words - n), n) for n in lengths]


def _candidates(text: str, keys: List[str], rng: random.Random, config: SalientConfig) -> List[Candidate]:
    """Candidates of every configured kind, each a proper part of the text and each text once (the first kind keeps it)."""
    out, seen = [], set()
    for kind in config.kinds:
        if kind == RANDOM:
            runs = _random_runs(len(keys), rng, config)
        else:
            runs = _sentences(text) if kind == SENTENCE else _ngrams(keys, config)
            if len(runs) > config.candidates:
                runs = sorted(rng.sample(runs, config.candidates))
        for start, length in runs:
            span = tuple(keys[start : start + length])
            if length < len(keys) and span not in seen:  # the whole text would pair the document with itself
                seen.add(span)
                out.append(Candidate(kind, start, length))
    return out


def _most_salient(candidates: List[Candidate], scores: Sequence[float], config: SalientConfig) -> List[Candidate]:
    """Each kind ranked by score (ties in candidate order), then the rankings taken in turn."""
    rankings = [[c for _, _, c in sorted((-s, i, c) for i, (c, s) in enumerate(zip(candidates, scores)) if c.kind == kind)]
                for kind in config.kinds]
    return [c for tier in itertools.zip_longest(*rankings) for c in tier if c is not None][: config.spans]


def _prepare(doc: Doc, config: SalientConfig, seed: int, salience: Salience) -> _Units:
    text = doc["text"]
    words, offsets = text_units.words(text), text_units.word_offsets(text)
    keys = [text_units.span_key(w) for w in words]
    candidates = _candidates(text, keys, derive_rng(seed, SALIENT, doc["doc_id"], "candidates"), config)
    if not candidates:
        raise Skip("no_candidates")
    scores = salience(text, [word_run(text, offsets, c.start, c.length) for c in candidates])
    return _Units(words, keys, offsets, _most_salient(candidates, scores, config))


def _draw(doc: Doc, units: _Units, rng: random.Random, config: SalientConfig) -> Draw:
    span = rng.choice(units.spans)
    words = units.words
    if rng.random() < config.remove_prob:
        words = without_span(words, units.keys, tuple(units.keys[span.start : span.start + span.length]))
    if not words:  # the text was nothing but repeats of the span
        raise Skip("empty_positive")
    # Both branches re-join the words, so the positive's layout never tells whether the span was cut.
    return Draw(query=word_run(doc["text"], units.offsets, span.start, span.length), positive=" ".join(words),
                title=doc.get("title") or "")


def recipe(seed: int, salience: Salience) -> Recipe:
    """The salient recipe with its scorer: candidates are drawn and scored once per document, in `prepare`."""
    return Recipe(SALIENT, functools.partial(_prepare, seed=seed, salience=salience), _draw)


def salient_pairs(doc: Doc, seed: int, config: SalientConfig = SalientConfig(), *, salience: Salience) -> List[Record]:
    """Salient-span pairs of one document; none if it has no candidate span shorter than its text."""
    return generate(recipe(seed, salience), doc, seed, config)[0]
