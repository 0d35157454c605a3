"""Content-addressed caching of an expensive per-item computation (embeddings, cross-encoder scores).

Items are `(item_id, payload)`. Every payload has a content key; values already stored under the
cache folder (Parquet files of `(key, value)`) are joined back by key, and only the misses are
computed, in batches, by Beam's `RunInference` with a `ModelHandler` (the bi-encoder's in
`transforms/embed.py`, the cross-encoder's in `transforms/crossencoder.py`). Identical payloads under
several ids are computed once. Computed values are written in tables of up to one batch
(`max_batch_size`), each its own cache file, by the worker that computed it (no shuffle of the values to
a single writer), so a rerun after a crash, or with a changed downstream option, recomputes only what is
not yet stored. Each file is committed as soon as its table is full (written under a temporary name,
then renamed), not at the end of the stage as Beam's file sinks commit theirs, so a run killed halfway
through embedding a corpus keeps the vectors of every finished table.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.window import GlobalWindows

from tripleminer.transforms.common import Progress, timed

log = logging.getLogger(__name__)
MISS, CACHE = "miss", "cache"


def content_key(*parts: str) -> str:
    """Cache key of a payload's parts (e.g. role and text): a 128-bit hash of their content."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class CacheFormat:
    """How one kind of value is stored: the Parquet schema of `(key, value)` and the conversions."""

    schema: pa.Schema
    to_table: Callable[[List[str], Any], pa.Table]  # keys and a batch of values -> cache rows
    from_table: Callable[[pa.Table], Iterator[Tuple[str, Any]]]  # cache rows -> (key, value)


def _vectors_table(keys: List[str], vectors: Any) -> pa.Table:
    """Cache rows built from the float32 matrix, without one Python float per component."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    offsets = np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors.reshape(-1)))
    return pa.Table.from_arrays([pa.array(keys, pa.string()), column], schema=VECTORS.schema)


def _table_vectors(table: pa.Table) -> Iterator[Tuple[str, np.ndarray]]:
    if not table.num_rows:
        return
    column = table.column("vector").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).copy()  # writable, one copy per batch
    dim, uneven = divmod(len(values), table.num_rows)
    if uneven or pc.any(pc.not_equal(pc.list_value_length(column), dim)).as_py():
        raise ValueError("cache rows have vectors of different dimensions; delete this model's cache folder")
    yield from zip(table.column("key").to_pylist(), values.reshape(-1, dim))


def _scores_table(keys: List[str], scores: Any) -> pa.Table:
    return pa.Table.from_arrays([pa.array(keys, pa.string()), pa.array(np.asarray(scores, dtype=np.float64))],
                                schema=SCORES.schema)


def _table_scores(table: pa.Table) -> Iterator[Tuple[str, float]]:
    yield from zip(table.column("key").to_pylist(), table.column("score").to_pylist())


VECTORS = CacheFormat(
    pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("vector", pa.list_(pa.float32()), nullable=False)]),
    _vectors_table, _table_vectors,
)
SCORES = CacheFormat(  # float64: a cached score is bit-identical to the freshly computed one
    pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("score", pa.float64(), nullable=False)]),
    _scores_table, _table_scores,
)


class CountedModelHandler(ModelHandler[Any, PredictionResult, Any]):
    """A ModelHandler for `CachedCompute`: subclasses load their model and `predict` a batch's values;
    this class times each call (`time/<stage>_ms`), counts the items in `counter` and logs progress,
    so every cached model reports the same way."""

    def __init__(self, counter: Any, stage: str, progress: Tuple[str, str], min_batch_size: int, max_batch_size: int) -> None:
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.counter, self.stage, self.progress_label = counter, stage, progress
        self._progress: Optional[Progress] = None

    def predict(self, batch: List[Any], model: Any) -> Sequence[Any]:
        """The values of the batch's payloads, in order."""
        raise NotImplementedError

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[PredictionResult]:
        items = list(batch)
        with timed(self.stage):
            values = self.predict(items, model)
        self.counter.inc(len(items))
        if self._progress is None:  # created on the worker, not pickled with the handler
            self._progress = Progress(*self.progress_label)
        self._progress.add(len(items))
        return [PredictionResult(item, value) for item, value in zip(items, values)]


class _SplitHits(beam.DoFn):
    """Per content key: cached -> (id, value) for every distinct id with it; else one miss to compute,
    `((key, distinct ids), payload)` (the keyed example RunInference carries to its value)."""

    def __init__(self, namespace: str, hits_counter: str) -> None:
        self.hits = Metrics.counter(namespace, hits_counter)

    def process(self, element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Any]:
        key, joined = element
        if not joined["items"]:
            return
        ids = tuple(dict.fromkeys(item_id for item_id, _ in joined["items"]))
        if joined["cached"]:
            self.hits.inc(len(ids))
            for item_id in ids:
                yield item_id, joined["cached"][0]
        else:
            yield beam.pvalue.TaggedOutput(MISS, ((key, ids), joined["items"][0][1]))


class _FanOut(beam.DoFn):
    """RunInference's keyed results -> `(item_id, value)` for each id of a payload, plus cache rows
    (tagged CACHE): one Arrow table per `rows_per_table` values and one at the end of each bundle,
    so memory stays bounded by a batch and each bundle's values land in one cache file."""

    def __init__(self, cache_format: CacheFormat, rows_per_table: int) -> None:
        self.cache_format, self.rows_per_table = cache_format, max(1, rows_per_table)

    def start_bundle(self) -> None:
        self.keys: List[str] = []
        self.values: List[Any] = []

    def _table(self) -> pa.Table:
        table = self.cache_format.to_table(self.keys, self.values)
        self.keys, self.values = [], []
        return table

    def process(self, element: Tuple[Tuple[str, Tuple[Hashable, ...]], PredictionResult]) -> Iterator[Any]:
        (key, ids), result = element
        self.keys.append(key)
        self.values.append(result.inference)
        for item_id in ids:
            yield item_id, result.inference
        if len(self.keys) >= self.rows_per_table:
            yield beam.pvalue.TaggedOutput(CACHE, self._table())

    def finish_bundle(self) -> Iterator[Any]:
        if self.keys:
            yield beam.pvalue.TaggedOutput(CACHE, GlobalWindows.windowed_value(self._table()))


class _CommitCacheFile(beam.DoFn):
    """Each table of computed values -> its own cache file `<prefix>-<uuid>.parquet`, committed at once:
    written as `.tmp-<name>` and renamed, so no partial file is ever under a name the cache reads. A
    retried bundle may store some values twice (same key, same value): harmless, the join takes one."""

    def __init__(self, cache_dir: str, prefix: str, schema: pa.Schema) -> None:
        self.cache_dir, self.prefix, self.schema = cache_dir, prefix, schema

    def process(self, table: pa.Table) -> Iterator[str]:
        name = f"{self.prefix}-{uuid.uuid4().hex}.parquet"
        path, tmp = FileSystems.join(self.cache_dir, name), FileSystems.join(self.cache_dir, f".tmp-{name}")
        with FileSystems.create(tmp) as f:
            pq.write_table(table.cast(self.schema), f)
        FileSystems.rename([tmp], [path])
        yield path


def _cache_files(cache_dir: str, prefix: str) -> List[str]:
    pattern = FileSystems.join(cache_dir, f"{prefix}-*.parquet")
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # no cache folder yet
        return []


class CachedCompute(beam.PTransform):
    """(item_id, payload) -> (item_id, value), reusing and extending the cache under `cache_dir`.

    `key_of(payload)` is the content key; cache files are `cache_dir/<prefix>-*.parquet` in
    `cache_format`. Only the misses reach Beam's `RunInference` with `model_handler` (a ModelHandler
    from payloads to `PredictionResult`s whose `inference` is the value): it batches them with the
    handler's `batch_elements_kwargs()` (BatchElements, which adapts to the measured cost of a batch),
    loads the model once per worker process, and reports model-load and batch-latency metrics under
    the handler's metrics namespace. Cache hits count as `namespace/hits_counter`.
    """

    def __init__(self, cache_dir: str, prefix: str, key_of: Callable[[Any], str], model_handler: ModelHandler,
                 cache_format: CacheFormat, namespace: str, hits_counter: str) -> None:
        super().__init__()
        self.cache_dir, self.prefix, self.key_of = cache_dir, prefix, key_of
        self.model_handler, self.cache_format = model_handler, cache_format
        self.namespace, self.hits_counter = namespace, hits_counter

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        files = _cache_files(self.cache_dir, self.prefix)
        log.info("%s cache: %d files under %s", self.prefix, len(files), self.cache_dir)
        key_of, cache_format = self.key_of, self.cache_format
        cached = (
            items.pipeline | "CacheFiles" >> beam.Create(files)
            | "ReadCache" >> beam.io.ReadAllFromParquetBatched()
            | "KeyCached" >> beam.FlatMap(cache_format.from_table)
        )
        keyed = items | "KeyByContent" >> beam.Map(lambda it: (key_of(it[1]), it))
        split = (
            {"items": keyed, "cached": cached}
            | "JoinCache" >> beam.CoGroupByKey()
            | "SplitHits" >> beam.ParDo(_SplitHits(self.namespace, self.hits_counter)).with_outputs(MISS, main="hits")
        )
        rows_per_table = self.model_handler.batch_elements_kwargs().get("max_batch_size", 512)
        computed = (
            split[MISS]
            | "Compute" >> RunInference(KeyedModelHandler(self.model_handler))
            | "FanOut" >> beam.ParDo(_FanOut(cache_format, rows_per_table)).with_outputs(CACHE, main="values")
        )
        computed[CACHE] | "WriteCache" >> beam.ParDo(_CommitCacheFile(self.cache_dir, self.prefix, cache_format.schema))
        return (split.hits, computed.values) | "AllValues" >> beam.Flatten()
