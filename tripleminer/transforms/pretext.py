"""Self-supervised positive pairs from a bare corpus: ICT, random crops, recurring spans, augmentation.

Each generator is a pure function of (document, seed, config) returning query records, plus a
Beam PTransform that wraps it and counts what it did. Every random draw of a pair comes from an
RNG derived from (seed, source, doc id, pair index) with a stable hash, so the output does not
depend on bundle order, parallelism or Python's per-process hash salt.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple,
                    Union)

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from tripleminer.schemas.inputs import validate_doc
from tripleminer.transforms import text_units
from tripleminer.transforms.positives import positive
from tripleminer.seeding import stable_seed
from tripleminer.transforms.common import candidates

ICT, CROP, SPAN, SAME_DOC, AUGMENT = "ict", "crop", "span", "same_doc", "augment"
METRICS_NAMESPACE = "pretext"

Doc = Mapping[str, Any]
Record = Dict[str, Any]


# --------------------------------------------------------------------------------------------
# Shared machinery: RNG derivation, pair counts, record layout, the generation driver.
# --------------------------------------------------------------------------------------------


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


class _Draw(NamedTuple):
    query: str
    positive: str
    title: str
    negatives: Sequence[Tuple[int, str]] = ()  # (passage index, passage text) of the same document


class _Recipe(NamedTuple):
    """What differs between generators: cutting a document into units, and drawing one pair."""

    source: str
    prepare: Callable[[Doc, Any], Any]
    draw: Callable[[Doc, Any, random.Random, Any], _Draw]


def _record(source: str, doc: Doc, k: int, draw: _Draw) -> Record:
    doc_id = doc["doc_id"]
    pos = positive(doc_id, source, title=draw.title, text=draw.positive)
    pools = []
    if draw.negatives:
        ids = [f"{doc_id}#p{i}" for i, _ in draw.negatives]
        texts = [text for _, text in draw.negatives]
        pools.append(candidates(SAME_DOC, ids, titles=[draw.title] * len(ids), texts=texts))
    return {"query_id": f"{source}:{doc_id}:{k}", "query": draw.query, "positives": [pos],
            "candidates": pools}


def _generate(recipe: _Recipe, doc: Doc, seed: int, config: Any) -> Tuple[List[Record], List[str]]:
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


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_rate(rate: float) -> None:
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")


# --------------------------------------------------------------------------------------------
# ICT (Lee et al. 2019): a sentence is the query, the rest of its passage the positive.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IctConfig:
    rate: float = 1.0  # pairs per passage
    query_in_block_prob: float = 0.1  # Megatron's default: keep the query sentence in the positive

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        _check_prob("query_in_block_prob", self.query_in_block_prob)


def _ict_prepare(doc: Doc, config: IctConfig) -> List[str]:
    sentences = text_units.split_sentences(doc["text"])
    if len(sentences) < 2:
        raise Skip("too_few_sentences")
    return sentences


def _ict_draw(doc: Doc, sentences: List[str], rng: random.Random, config: IctConfig) -> _Draw:
    i = rng.randrange(len(sentences))
    # Both branches re-join sentences, so the positive's layout never tells whether the query was removed.
    block = sentences if rng.random() < config.query_in_block_prob else sentences[:i] + sentences[i + 1 :]
    return _Draw(query=sentences[i], positive=" ".join(block), title=doc.get("title") or "")


_ICT = _Recipe(ICT, _ict_prepare, _ict_draw)


def ict_pairs(doc: Doc, seed: int, config: IctConfig = IctConfig()) -> List[Record]:
    """Inverse Cloze Task pairs of one passage; none if it has fewer than two sentences."""
    return _generate(_ICT, doc, seed, config)[0]


# --------------------------------------------------------------------------------------------
# Crop (Contriever, Izacard et al. 2021): two independent random spans of the same passage.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropConfig:
    rate: float = 1.0
    ratio_min: float = 0.1  # crop length, as a fraction of the passage's words (Contriever's defaults)
    ratio_max: float = 0.5
    min_words: int = 10  # shorter passages are skipped: a 10% crop of them would be a single word

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        if not 0.0 < self.ratio_min <= self.ratio_max <= 1.0:
            raise ValueError(f"need 0 < ratio_min <= ratio_max <= 1, got {self.ratio_min}, {self.ratio_max}")
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")


def _crop_prepare(doc: Doc, config: CropConfig) -> List[Tuple[int, int]]:
    offsets = text_units.word_offsets(doc["text"])
    if len(offsets) < config.min_words:
        raise Skip("too_few_words")
    return offsets


def _random_crop(text: str, offsets: List[Tuple[int, int]], rng: random.Random, config: CropConfig) -> str:
    """A contiguous run of words, cut from the original text so its spacing is kept as is."""
    n = len(offsets)
    length = max(1, int(n * rng.uniform(config.ratio_min, config.ratio_max)))
    start = rng.randint(0, n - length)
    return text[offsets[start][0] : offsets[start + length - 1][1]]


def _crop_draw(doc: Doc, offsets: List[Tuple[int, int]], rng: random.Random, config: CropConfig) -> _Draw:
    query = _random_crop(doc["text"], offsets, rng, config)
    # No title: both views are bare crops, so the title cannot give the match away.
    return _Draw(query=query, positive=_random_crop(doc["text"], offsets, rng, config), title="")


_CROP = _Recipe(CROP, _crop_prepare, _crop_draw)


def crop_pairs(doc: Doc, seed: int, config: CropConfig = CropConfig()) -> List[Record]:
    """Independent-cropping pairs of one passage; none if it has fewer than `min_words` words."""
    return _generate(_CROP, doc, seed, config)[0]


# --------------------------------------------------------------------------------------------
# Recurring spans (Spider, Ram et al. 2021): two passages of a document sharing an n-gram.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanConfig:
    rate: float = 1.0  # pairs per document
    passage_words: int = 100  # DPR-style passages
    max_span_words: int = 10
    query_window_words: int = 30
    keep_answer_prob: float = 0.5  # Spider's default: keep the span in the query half the time

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        _check_prob("keep_answer_prob", self.keep_answer_prob)
        if min(self.passage_words, self.max_span_words, self.query_window_words) < 1:
            raise ValueError("passage_words, max_span_words and query_window_words must be >= 1")


Span = Tuple[str, ...]


class _SpanUnits(NamedTuple):
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


def _span_prepare(doc: Doc, config: SpanConfig) -> _SpanUnits:
    passages = split_passages(doc["text"], config.passage_words)
    if len(passages) < 2:
        raise Skip("one_passage")
    keys = [[text_units.span_key(w) for w in passage] for passage in passages]
    spans = list(recurring_spans(keys, config.max_span_words).items())
    if not spans:
        raise Skip("no_recurring_span")
    return _SpanUnits(passages, keys, spans)


def find_span(keys: Sequence[str], span: Span) -> List[int]:
    """Start of every occurrence of `span` in `keys`."""
    n = len(span)
    return [i for i in range(len(keys) - n + 1) if tuple(keys[i : i + n]) == span]


def _without_span(words: List[str], keys: List[str], span: Span) -> List[str]:
    """`words` with every occurrence of `span` cut out, including any the cutting itself creates."""
    while True:
        found = find_span(keys, span)
        if not found:
            return words
        i = found[0]
        words, keys = words[:i] + words[i + len(span) :], keys[:i] + keys[i + len(span) :]


def _query_window(words: List[str], keys: List[str], span: Span, rng: random.Random,
                  config: SpanConfig) -> Tuple[List[str], List[str]]:
    """A random window of `query_window_words` words that contains one occurrence of the span."""
    start = rng.choice(find_span(keys, span))
    end = start + len(span)
    width = min(len(words), max(config.query_window_words, len(span)))
    left = rng.randint(max(0, end - width), min(start, len(words) - width))
    return words[left : left + width], keys[left : left + width]


def _span_draw(doc: Doc, units: _SpanUnits, rng: random.Random, config: SpanConfig) -> _Draw:
    span, holders = rng.choice(units.spans)
    q, p = rng.sample(holders, 2)
    words, keys = _query_window(units.passages[q], units.keys[q], span, rng, config)
    if rng.random() >= config.keep_answer_prob:
        words = _without_span(words, keys, span)
    if not words:
        raise Skip("empty_query")
    negatives = [(i, " ".join(units.passages[i])) for i in range(len(units.passages)) if i not in holders]
    return _Draw(query=" ".join(words), positive=" ".join(units.passages[p]), title=doc.get("title") or "",
                 negatives=negatives)


_SPAN = _Recipe(SPAN, _span_prepare, _span_draw)


def span_pairs(doc: Doc, seed: int, config: SpanConfig = SpanConfig()) -> List[Record]:
    """Recurring-span pairs of one document, with its passages lacking the span as `same_doc` candidates."""
    return _generate(_SPAN, doc, seed, config)[0]


# --------------------------------------------------------------------------------------------
# Augmentation: word deletion, replacement and masking on either side of any pair.
# --------------------------------------------------------------------------------------------

SIDES = ("query", "positive")


@dataclass(frozen=True)
class AugmentConfig:
    deletion_prob: float = 0.1
    replacement_prob: float = 0.1
    masking_prob: float = 0.1
    mask_token: str = "[MASK]"
    sides: Tuple[str, ...] = ("query",)  # any of SIDES

    def __post_init__(self) -> None:
        for name in ("deletion_prob", "replacement_prob", "masking_prob"):
            _check_prob(name, getattr(self, name))
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


def _keyed_words(doc: Doc, seed: int) -> List[Tuple[int, str]]:
    """Every word occurrence of a document with a random key that depends only on (seed, doc id, position)."""
    rng = derive_rng(seed, "vocabulary", doc["doc_id"], 0)
    return [(rng.getrandbits(64), word) for word in text_units.letter_words(doc["text"])]


def vocabulary_sample(docs: Iterable[Doc], size: int, seed: int) -> List[str]:
    """`size` word occurrences drawn uniformly from the corpus (so frequent words come up more often),
    the same whatever the document order: the occurrences with the smallest keys (a bottom-k sample)."""
    keyed = (kw for doc in docs for kw in _keyed_words(doc, seed))
    return [word for _, word in heapq.nsmallest(size, keyed)]


# --------------------------------------------------------------------------------------------
# Beam transforms.
# --------------------------------------------------------------------------------------------


def _counter_name(source: str, name: str) -> str:
    return f"{source}_{name}"


class _Counters:
    """Beam counters `pretext/<source>_<name>`, created on first use (skip reasons are known only at run time)."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._counters: Dict[str, Any] = {}

    def inc(self, name: str, n: int = 1) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(METRICS_NAMESPACE, _counter_name(self._source, name))
        self._counters[name].inc(n)


class _GenerateDoFn(beam.DoFn):
    def __init__(self, recipe: _Recipe, seed: int, config: Any) -> None:
        self._recipe, self._seed, self._config = recipe, seed, config

    def setup(self) -> None:
        self._counters = _Counters(self._recipe.source)

    def process(self, doc: Doc) -> Iterator[Record]:
        pairs, skipped = _generate(self._recipe, doc, self._seed, self._config)
        self._counters.inc("docs")
        self._counters.inc("pairs", len(pairs))
        for reason in skipped:
            self._counters.inc(f"skipped_{reason}")
        yield from pairs


class _PretextPairs(beam.PTransform):
    """Corpus docs in, query records out; counts `pretext/<source>_docs`, `_pairs` and `_skipped_<reason>`."""

    _recipe: _Recipe
    _config_type: type

    def __init__(self, seed: int, config: Optional[Any] = None) -> None:
        super().__init__()
        self._seed = seed
        self._config = config if config is not None else self._config_type()

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return docs | "Generate" >> beam.ParDo(_GenerateDoFn(self._recipe, self._seed, self._config))


class IctPairs(_PretextPairs):
    """ICT pairs of every passage (see `ict_pairs`)."""

    _recipe, _config_type = _ICT, IctConfig


class CropPairs(_PretextPairs):
    """Independent-cropping pairs of every passage (see `crop_pairs`)."""

    _recipe, _config_type = _CROP, CropConfig


class SpanPairs(_PretextPairs):
    """Recurring-span pairs of every document (see `span_pairs`)."""

    _recipe, _config_type = _SPAN, SpanConfig


class _AugmentDoFn(beam.DoFn):
    def __init__(self, seed: int, config: AugmentConfig) -> None:
        self._seed, self._config = seed, config

    def setup(self) -> None:
        self._counters = _Counters(AUGMENT)

    def process(self, pair: Record, vocabulary: Sequence[str]) -> Iterator[Record]:
        self._counters.inc(pair["positives"][0]["source"])  # pretext/augment_<source of the pair>
        yield augment_pair(pair, self._seed, vocabulary, self._config)


class AugmentPairs(beam.PTransform):
    """Augment query records; `vocabulary` is a list or the one-list PCollection of `SampleVocabulary`."""

    def __init__(self, vocabulary: Union[Sequence[str], beam.PCollection], seed: int,
                 config: AugmentConfig = AugmentConfig()) -> None:
        super().__init__()
        self._vocabulary, self._seed, self._config = vocabulary, seed, config

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        vocabulary = self._vocabulary
        if isinstance(vocabulary, beam.PCollection):
            vocabulary = beam.pvalue.AsSingleton(vocabulary)
        return pairs | "Augment" >> beam.ParDo(_AugmentDoFn(self._seed, self._config), vocabulary=vocabulary)


class _BottomKWords(beam.CombineFn):
    """`vocabulary_sample` as a CombineFn: one input per document, not one per word occurrence."""

    def __init__(self, size: int, seed: int) -> None:
        self._size, self._seed = size, seed

    def _trim(self, keyed: List[Tuple[int, str]]) -> List[Tuple[int, str]]:
        return heapq.nsmallest(self._size, keyed)

    def create_accumulator(self) -> List[Tuple[int, str]]:
        return []

    def add_input(self, acc: List[Tuple[int, str]], doc: Doc) -> List[Tuple[int, str]]:
        acc.extend(_keyed_words(doc, self._seed))
        return self._trim(acc) if len(acc) > 2 * self._size else acc  # trim in batches: O(n log k) overall

    def merge_accumulators(self, accs: Iterable[List[Tuple[int, str]]]) -> List[Tuple[int, str]]:
        return self._trim([kw for acc in accs for kw in acc])

    def extract_output(self, acc: List[Tuple[int, str]]) -> List[str]:
        return [word for _, word in self._trim(acc)]


class SampleVocabulary(beam.PTransform):
    """Corpus docs in, one list out: the same sample as `vocabulary_sample`, for `AugmentPairs`."""

    def __init__(self, size: int, seed: int) -> None:
        super().__init__()
        self._size, self._seed = size, seed

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return docs | "BottomK" >> beam.CombineGlobally(_BottomKWords(self._size, self._seed))


# --------------------------------------------------------------------------------------------
# Throughput, for benchmarks.
# --------------------------------------------------------------------------------------------

_RECIPES = {r.source: r for r in (_ICT, _CROP, _SPAN)}
_TRANSFORMS = {ICT: IctPairs, CROP: CropPairs, SPAN: SpanPairs}
BENCHMARK_VOCABULARY_SIZE = 10_000


@dataclass(frozen=True)
class Throughput:
    source: str  # a generator, or "<generator>+augment"
    mode: str  # "pure" or the Beam runner's name
    pairs: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("inf")


def _label(source: str, augment: Optional[AugmentConfig]) -> str:
    return f"{source}+{AUGMENT}" if augment else source


def measure_throughput(source: str, docs: Sequence[Doc], seed: int = 0, config: Optional[Any] = None,
                       augment: Optional[AugmentConfig] = None) -> Throughput:
    """Pairs per second of a generator's pure function over `docs`, optionally followed by augmentation
    (the vocabulary sample is drawn before the clock starts)."""
    config = config if config is not None else _TRANSFORMS[source]._config_type()
    vocabulary = vocabulary_sample(docs, BENCHMARK_VOCABULARY_SIZE, seed) if augment else []
    start = time.perf_counter()
    pairs = [pair for doc in docs for pair in _generate(_RECIPES[source], doc, seed, config)[0]]
    if augment:
        pairs = [augment_pair(pair, seed, vocabulary, augment) for pair in pairs]
    return Throughput(_label(source, augment), "pure", len(pairs), time.perf_counter() - start)


def measure_beam_throughput(source: str, corpus_jsonl: str, seed: int = 0, config: Optional[Any] = None,
                            augment: Optional[AugmentConfig] = None, runner: str = "DirectRunner") -> Throughput:
    """Pairs per second of a generator's transform in a whole Beam pipeline reading a BEIR corpus file.

    Pipeline start-up, reading and parsing are included, as a user would see them; the corpus is read
    from a file because `beam.Create` of thousands of documents would mostly time their pickling.
    """
    pipeline = beam.Pipeline(runner=runner)
    docs = (pipeline | "Read" >> beam.io.ReadFromText(corpus_jsonl) | "Parse" >> beam.Map(json.loads)
            | "Validate" >> beam.Map(validate_doc))
    pairs = docs | source >> _TRANSFORMS[source](seed, config)
    if augment:
        vocabulary = docs | "Vocabulary" >> SampleVocabulary(BENCHMARK_VOCABULARY_SIZE, seed)
        _ = pairs | "Augment" >> AugmentPairs(vocabulary, seed, augment)
    start = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    return Throughput(_label(source, augment), runner, counter_value(result, source, "pairs"), seconds)


def counter_value(result: PipelineResult, source: str, name: str) -> int:
    """The committed value of one of a source's counters in a finished pipeline (0 if never incremented)."""
    metric = MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(_counter_name(source, name))
    query = result.metrics().query(metric)
    return sum(c.committed for c in query["counters"])
