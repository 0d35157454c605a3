"""Embed texts with a sentence-transformers model inside Beam, with a content-addressed cache.

Every text is keyed by a hash of its content; vectors already in the cache (Parquet files of
`(key, vector)` under `WORK_DIR/embeddings/<model key>/`) are reused, and only the misses are
embedded and appended as a new cache file. A rerun that changes a rank window or a ratio, or a
corpus that grew, embeds nothing or only the new documents.

The model loads once per worker process in `DoFn.setup()` (shared by its threads); batches of `max_batch_size` texts go to one
`encode` call, which sorts them by length so padding stays small (length-bucketed batches).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from tripleminer.encoders import Encoder, EncoderSettings
from tripleminer.transforms.common import Progress, timed

log = logging.getLogger(__name__)
MISS = "miss"
CACHE_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("vector", pa.list_(pa.float32()), nullable=False)])


def text_key(role: str, text: str) -> str:
    """Cache key of one text: its role (query or document, which some models embed differently) and content."""
    return hashlib.blake2b(f"{role}\x1f{text}".encode("utf-8"), digest_size=16).hexdigest()


class _Encode(beam.DoFn):
    def __init__(self, settings: EncoderSettings, role: str) -> None:
        self.settings, self.role = settings, role
        self.texts = Metrics.counter("embed", f"{role}_texts_embedded")
        self._shared = shared.Shared()  # one model per worker process, whatever its thread count

    def setup(self) -> None:
        self.encoder = self._shared.acquire(lambda: Encoder(self.settings), tag=self.settings.key())
        self.progress = Progress(f"embed {self.role}s", "texts")

    def process(self, batch: List[Tuple[str, str]]) -> Iterator[Tuple[str, np.ndarray]]:
        keys, texts = zip(*batch)
        with timed(f"embed_{self.role}"):
            vectors = self.encoder.encode(list(texts))
        self.texts.inc(len(texts))
        self.progress.add(len(texts))
        yield from zip(keys, vectors)


class _SplitHits(beam.DoFn):
    """Per text key: cached -> (id, vector) for every id with that text; else one miss to embed."""

    def __init__(self, role: str) -> None:
        self.hits = Metrics.counter("embed", f"{role}_cache_hits")

    def process(self, element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Any]:
        key, joined = element
        if not joined["items"]:
            return
        if joined["cached"]:
            vector = np.asarray(joined["cached"][0], dtype=np.float32)
            self.hits.inc(len(joined["items"]))
            for item_id, _ in joined["items"]:
                yield item_id, vector
        else:
            yield beam.pvalue.TaggedOutput(MISS, (key, joined["items"]))


def _cache_files(cache_dir: str, role: str) -> List[str]:
    pattern = FileSystems.join(cache_dir, f"{role}-*.parquet")
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # no cache folder yet
        return []


class EmbedWithCache(beam.PTransform):
    """(id, text) -> (id, float32 unit vector), reusing and extending the embedding cache."""

    def __init__(self, settings: EncoderSettings, role: str, work_dir: str,
                 min_batch_size: int = 32, max_batch_size: int = 512) -> None:
        super().__init__()
        self.settings, self.role = settings, role
        self.cache_dir = FileSystems.join(work_dir, "embeddings", settings.key())
        self.min_batch_size, self.max_batch_size = min_batch_size, max_batch_size

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        role = self.role
        files = _cache_files(self.cache_dir, role)
        log.info("%s embeddings: %d cache files under %s", role, len(files), self.cache_dir)
        pipeline = items.pipeline
        cached = (
            pipeline | "CacheFiles" >> beam.Create(files)
            | "ReadCache" >> beam.io.ReadAllFromParquet()
            | "KeyCached" >> beam.Map(lambda r: (r["key"], r["vector"]))
        )
        keyed = items | "KeyByText" >> beam.Map(lambda it: (text_key(role, it[1]), it))
        split = (
            {"items": keyed, "cached": cached}
            | "JoinCache" >> beam.CoGroupByKey()
            | "SplitHits" >> beam.ParDo(_SplitHits(role)).with_outputs(MISS, main="hits")
        )
        embedded = (
            split[MISS]
            | "TextOfMiss" >> beam.Map(lambda kv: (kv[0], kv[1][0][1]))
            | "Batch" >> beam.BatchElements(min_batch_size=self.min_batch_size, max_batch_size=self.max_batch_size)
            | "Encode" >> beam.ParDo(_Encode(self.settings, role))
        )
        (
            embedded
            | "ToCacheRow" >> beam.Map(lambda kv: {"key": kv[0], "vector": kv[1].tolist()})
            | "WriteCache" >> beam.io.WriteToParquet(
                FileSystems.join(self.cache_dir, f"{role}-{uuid.uuid4().hex[:12]}"),
                schema=CACHE_SCHEMA, file_name_suffix=".parquet", num_shards=1,
            )
        )
        missed = (
            {"items": split[MISS], "vector": embedded}
            | "JoinEmbedded" >> beam.CoGroupByKey()
            | "IdsOfMiss" >> beam.FlatMap(lambda kv: [(item_id, kv[1]["vector"][0]) for items in kv[1]["items"] for item_id, _ in items])
        )
        return (split.hits, missed) | "AllVectors" >> beam.Flatten()
