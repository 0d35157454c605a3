"""Embed texts with a sentence-transformers model inside Beam, with a content-addressed cache.

Every text is keyed by a hash of its role and content; vectors already in the cache (Parquet files
of `(key, vector)` under `WORK_DIR/embeddings/<model key>/`, see `transforms/cache.py`) are reused,
and only the misses are embedded. A rerun that changes a rank window or a ratio, or a corpus that
grew, embeds nothing or only the new documents.

The misses go through Beam's `RunInference` with `EncoderModelHandler`: the model loads once per
worker process (shared by its threads), batches of `min_batch_size`..`max_batch_size` texts go to
one `Encoder.encode` call, which sorts them by length so padding stays small (length-bucketed
batches), and Beam reports model-load time and batch latency under `RunInference_embed_<role>`.
The model runs at `settings.precision` (fp32, or bf16/fp16 under autocast, logged once per worker);
vectors are float32 either way, and a non-fp32 precision is part of the cache folder's key, so
vectors computed at different precisions never mix.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.encoders import Encoder, EncoderSettings
from tripleminer.precision import log_precision
from tripleminer.transforms.cache import VECTORS, CachedCompute, CountedModelHandler, content_key


def text_key(role: str, text: str) -> str:
    """Cache key of one text: its role (query or document, which some models embed differently) and content."""
    return content_key(role, text)


class EncoderModelHandler(CountedModelHandler):
    """Texts -> `PredictionResult(text, float32 unit vector)` with `tripleminer.encoders.Encoder`.

    Counts `embed/<role>_texts_embedded` and the busy time `time/embed_<role>_ms`; Beam's own
    RunInference metrics (num_inferences, batch latency, model load time) go under
    `RunInference_embed_<role>`.
    """

    def __init__(self, settings: EncoderSettings, role: str, min_batch_size: int = 32, max_batch_size: int = 512) -> None:
        super().__init__(Metrics.counter("embed", f"{role}_texts_embedded"), f"embed_{role}", (f"embed {role}s", "texts"),
                         min_batch_size, max_batch_size)
        self.settings, self.role = settings, role

    def load_model(self) -> Encoder:
        encoder = Encoder(self.settings)
        log_precision(f"bi-encoder ({self.role} texts, {self.settings.backend})", self.settings.model, self.settings.precision,
                      "cpu" if self.settings.backend == "onnx" else encoder.device_kind)
        return encoder

    def predict(self, batch: List[str], model: Encoder) -> Sequence[Any]:
        return model.encode(batch)

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text) for text in batch)  # characters: cheaper than Beam's default of pickling the batch

    def get_metrics_namespace(self) -> str:
        return f"RunInference_embed_{self.role}"


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
        handler = EncoderModelHandler(self.settings, role, self.min_batch_size, self.max_batch_size)
        return items | "Cached" >> CachedCompute(
            self.cache_dir, role, lambda text: text_key(role, text), handler, VECTORS, "embed", f"{role}_cache_hits",
        )
