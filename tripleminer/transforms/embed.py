"""Embed texts with a sentence-transformers model inside Beam, with a content-addressed cache.

Every text is keyed by a hash of its role and content; vectors already in the cache (Parquet files
of `(key, vector)` under `WORK_DIR/embeddings/<model key>/`, see `transforms/cache.py`) are reused,
and only the misses are embedded. A rerun that changes a rank window or a ratio, or a corpus that
grew, embeds nothing or only the new documents.

The model loads once per worker process in `DoFn.setup()` (shared by its threads); batches of up to
`max_batch_size` texts go to one `encode` call, which sorts them by length so padding stays small
(length-bucketed batches).
"""

from __future__ import annotations

from typing import List

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from tripleminer.encoders import Encoder, EncoderSettings
from tripleminer.transforms.cache import VECTORS, BatchCompute, CachedCompute, content_key
from tripleminer.transforms.common import Progress, timed


def text_key(role: str, text: str) -> str:
    """Cache key of one text: its role (query or document, which some models embed differently) and content."""
    return content_key(role, text)


class _Encode(BatchCompute):
    def __init__(self, settings: EncoderSettings, role: str) -> None:
        super().__init__(VECTORS)
        self.settings, self.role = settings, role
        self.texts = Metrics.counter("embed", f"{role}_texts_embedded")
        self._shared = shared.Shared()  # one model per worker process, whatever its thread count

    def setup(self) -> None:
        self.encoder = self._shared.acquire(lambda: Encoder(self.settings), tag=self.settings.key())
        self.progress = Progress(f"embed {self.role}s", "texts")

    def compute(self, texts: List[str]) -> np.ndarray:
        with timed(f"embed_{self.role}"):
            vectors = self.encoder.encode(texts)
        self.texts.inc(len(texts))
        self.progress.add(len(texts))
        return vectors


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
        return items | "Cached" >> CachedCompute(
            self.cache_dir, role, lambda text: text_key(role, text), _Encode(self.settings, role),
            self.min_batch_size, self.max_batch_size, "embed", f"{role}_cache_hits",
        )
