"""Beam transforms around the pure generators and augmentation, counting what they did.

Counters are `pretext/<source>_<name>`: `<source>_docs`, `_pairs` and `_skipped_<reason>` per
generator, `augment_<source>` per augmented pair; `counter_value` reads one back.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from tripleminer.index.bm25 import CorpusStats
from tripleminer.transforms.embed import EncoderModelHandler
from tripleminer.transforms.pretext import crop, ict, neighbors, salient, span, title
from tripleminer.transforms.pretext.augment import AugmentConfig, augment_pair, keyed_words
from tripleminer.transforms.pretext.core import AUGMENT, METRICS_NAMESPACE, SALIENT, Doc, Recipe, Record, generate


def _counter_name(source: str, name: str) -> str:
    return f"{source}_{name}"


def counter_value(result: PipelineResult, source: str, name: str) -> int:
    """The committed value of one of a source's counters in a finished pipeline (0 if never incremented)."""
    metric = MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(_counter_name(source, name))
    query = result.metrics().query(metric)
    return sum(c.committed for c in query["counters"])


class _Counters:
    """Beam counters `pretext/<source>_<name>`, created on first use (skip reasons are known only at run time)."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._counters: Dict[str, Any] = {}

    def inc(self, name: str, n: int = 1) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(METRICS_NAMESPACE, _counter_name(self._source, name))
        self._counters[name].inc(n)

    def generated(self, pairs: List[Record], skipped: List[str]) -> List[Record]:
        """Count one document's outcome (`generate`'s result): a document seen, its pairs, its skips by reason."""
        self.inc("docs")
        self.inc("pairs", len(pairs))
        for reason in skipped:
            self.inc(f"skipped_{reason}")
        return pairs


class _GenerateDoFn(beam.DoFn):
    def __init__(self, recipe: Recipe, seed: int, config: Any) -> None:
        self._recipe, self._seed, self._config = recipe, seed, config

    def setup(self) -> None:
        self._counters = _Counters(self._recipe.source)

    def process(self, doc: Doc) -> Iterator[Record]:
        yield from self._counters.generated(*generate(self._recipe, doc, self._seed, self._config))


class _PretextPairs(beam.PTransform):
    """Corpus docs in, query records out; counts `pretext/<source>_docs`, `_pairs` and `_skipped_<reason>`."""

    _recipe: Recipe
    _config_type: type

    def __init__(self, seed: int, config: Optional[Any] = None) -> None:
        super().__init__()
        self._seed = seed
        self._config = config if config is not None else self._config_type()

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return docs | "Generate" >> beam.ParDo(_GenerateDoFn(self._recipe, self._seed, self._config))


class IctPairs(_PretextPairs):
    """ICT pairs of every passage (see `ict_pairs`)."""

    _recipe, _config_type = ict.RECIPE, ict.IctConfig


class CropPairs(_PretextPairs):
    """Independent-cropping pairs of every passage (see `crop_pairs`)."""

    _recipe, _config_type = crop.RECIPE, crop.CropConfig


class SpanPairs(_PretextPairs):
    """Recurring-span pairs of every document (see `span_pairs`)."""

    _recipe, _config_type = span.RECIPE, span.SpanConfig


class TitlePairs(_PretextPairs):
    """(title, body) pairs of every document with a title of its own (see `title_pairs`)."""

    _recipe, _config_type = title.RECIPE, title.TitleConfig


class NeighborsPairs(_PretextPairs):
    """Adjacent-chunk pairs of every document (see `neighbors_pairs`)."""

    _recipe, _config_type = neighbors.RECIPE, neighbors.NeighborsConfig


class _SalientDoFn(beam.DoFn):
    """`salient_pairs` with its scorer built once per worker: the bi-encoder loaded in `setup`, or BM25
    over the corpus statistics (a side input) on the first document."""

    def __init__(self, seed: int, config: salient.SalientConfig) -> None:
        self._seed, self._config = seed, config

    def setup(self) -> None:
        self._counters = _Counters(SALIENT)
        self._recipe: Optional[Recipe] = None
        if self._config.scorer == salient.DENSE:
            # the mine pipeline's model loading and precision logging
            model = EncoderModelHandler(self._config.encoder_settings(), SALIENT).load_model()
            self._recipe = salient.recipe(self._seed, salient.DenseSalience(model))

    def process(self, doc: Doc, stats: Optional[CorpusStats] = None) -> Iterator[Record]:
        if self._recipe is None:  # bm25: the side input is one value for the whole (global) window
            self._recipe = salient.recipe(self._seed, salient.Bm25Salience(stats, self._config.bm25))
        yield from self._counters.generated(*generate(self._recipe, doc, self._seed, self._config))


class SalientPairs(beam.PTransform):
    """Salient-span pairs of every document (see `salient_pairs`); the bm25 scorer's corpus statistics
    are combined over the same documents first (one small side input)."""

    def __init__(self, seed: int, config: Optional[salient.SalientConfig] = None) -> None:
        super().__init__()
        self._seed = seed
        self._config = config if config is not None else salient.SalientConfig()

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        generate_pairs = _SalientDoFn(self._seed, self._config)
        if self._config.scorer == salient.DENSE:
            return docs | "Generate" >> beam.ParDo(generate_pairs)
        stats = (docs
                 | "BatchDocs" >> beam.BatchElements(min_batch_size=64, max_batch_size=2048)
                 | "BatchStats" >> beam.Map(salient.term_stats, self._config.bm25.stemmer)
                 | "CorpusStats" >> beam.CombineGlobally(salient.merge_stats))
        return docs | "Generate" >> beam.ParDo(generate_pairs, stats=beam.pvalue.AsSingleton(stats))


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
        acc.extend(keyed_words(doc, self._seed))
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
