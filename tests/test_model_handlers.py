"""The models behind Beam's RunInference: the bi-encoder's and the cross-encoder's ModelHandlers give
the same values as calling the models directly, only cache misses reach them, and Beam's
RunInference metrics sit beside the project's own counters."""

from __future__ import annotations

import ast
import glob
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from tripleminer.encoders import Encoder, EncoderSettings, default_model
from tripleminer.pipelines.stats import counters
from tripleminer.rerank.score import score_pairs
from tripleminer.transforms.crossencoder import CrossEncoderModelHandler, DenoiseSettings
from tripleminer.transforms.embed import EmbedWithCache, EncoderModelHandler, text_key

TEXTS = [
    "Dense retrievers learn from hard negatives.",
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "A cross-encoder reads the query and the passage together.",
    "x",
    "Vitamin D deficiency is associated with an increased risk of fractures in older adults.",
    "short query",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
    "Beam pipelines run on many runners.",
    "",
    "Contrastive losses pull a query towards its positive and away from its negatives.",
    "Apache Parquet stores columns.",
    "Smoking is a major risk factor for lung cancer.",
]
VECTORS_OUT = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32()))])


@pytest.fixture(scope="module")
def settings() -> EncoderSettings:
    return EncoderSettings(default_model(), max_seq_length=128, encode_batch_size=4)


@pytest.fixture(scope="module")
def encoder(settings) -> Encoder:
    return Encoder(settings)


def test_encoder_handler_batching_and_namespace(settings):
    handler = EncoderModelHandler(settings, "query", min_batch_size=4, max_batch_size=8)
    assert dict(handler.batch_elements_kwargs()) == {"min_batch_size": 4, "max_batch_size": 8}
    assert handler.get_metrics_namespace() == "RunInference_embed_query"
    assert not handler.share_model_across_processes()  # one model per worker process, like the old DoFn


@pytest.mark.slow
def test_encoder_handler_gives_encoders_vectors(settings, encoder):
    handler = EncoderModelHandler(settings, "doc")
    results = list(handler.run_inference(TEXTS, encoder))
    assert all(isinstance(r, PredictionResult) for r in results) and [r.example for r in results] == TEXTS
    got = np.stack([r.inference for r in results])
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, encoder.encode(TEXTS), atol=1e-5, rtol=0)
    loaded = handler.load_model()
    assert isinstance(loaded, Encoder) and loaded.model.max_seq_length == 128


def embed(settings, items, work_dir: Path, out_dir: Path):
    """EmbedWithCache on DirectRunner: {id: vector} (from the written outputs) and the run's counters."""
    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
    (
        p | beam.Create(items)
        | EmbedWithCache(settings, "doc", str(work_dir), min_batch_size=4, max_batch_size=8)
        | beam.MapTuple(lambda i, v: {"id": i, "vector": v.tolist()})
        | beam.io.WriteToParquet(str(out_dir / "vectors"), schema=VECTORS_OUT, file_name_suffix=".parquet")
    )
    result = p.run()
    result.wait_until_finish()
    rows = [r for f in glob.glob(str(out_dir / "vectors*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}, counters(result), result


@pytest.mark.slow
def test_embed_with_cache_runs_misses_through_runinference_once(settings, encoder, tmp_path):
    items = [(f"d{i}", t) for i, t in enumerate(TEXTS)] + [("dup", TEXTS[0])]  # a text under two ids: embedded once
    vectors, c, result = embed(settings, items, tmp_path / "work", tmp_path / "o1")
    assert sorted(vectors) == sorted(i for i, _ in items)
    expected = encoder.encode(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(vectors[f"d{i}"], expected[i], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(vectors["dup"], vectors["d0"])
    assert c["embed"] == {"doc_texts_embedded": len(TEXTS)}
    assert c["RunInference_embed_doc"]["num_inferences"] == len(TEXTS)  # Beam's own count: only the misses
    assert c["time"]["embed_doc_ms"] >= 0
    sizes = result.metrics().query()["distributions"]
    batch = [d.committed or d.attempted for d in sizes if d.key.metric.name == "inference_request_batch_size"]
    assert batch and batch[0].max <= 8 and batch[0].sum == len(TEXTS)
    load = [d for d in sizes if d.key.metric.name == "load_model_latency_milli_secs"]
    assert load  # model-load time comes from RunInference
    cached = {r["key"]: np.asarray(r["vector"]) for f in (tmp_path / "work").glob("embeddings/*/doc-*.parquet")
              for r in pq.read_table(f).to_pylist()}
    assert sorted(cached) == sorted({text_key("doc", t) for t in TEXTS})  # each computed value is in the cache

    again, c2, _ = embed(settings, items, tmp_path / "work", tmp_path / "o2")  # same work dir: computes nothing
    assert c2["embed"] == {"doc_cache_hits": len(items)} and "RunInference_embed_doc" not in c2
    assert all(np.array_equal(again[i], vectors[i]) for i in vectors)


@pytest.mark.slow
def test_cross_encoder_handler_gives_probabilities(trained_ce, tmp_path):
    settings = DenoiseSettings(str(trained_ce), batch_pairs=3, predict_batch_size=2, max_length=64)
    handler = CrossEncoderModelHandler(settings)
    assert dict(handler.batch_elements_kwargs()) == {"min_batch_size": 3, "max_batch_size": 3}
    assert handler.get_metrics_namespace() == "RunInference_crossencoder"
    model = handler.load_model()
    pairs = [(TEXTS[i], TEXTS[j]) for i, j in [(0, 9), (4, 11), (5, 2), (11, 6), (3, 8)]]
    results = list(handler.run_inference(pairs, model))
    scores = np.array([r.inference for r in results])
    assert [r.example for r in results] == pairs
    assert ((0 <= scores) & (scores <= 1)).all()
    np.testing.assert_array_equal(scores, score_pairs(model, pairs, 2))  # the same model call as score_pairs

    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
    (
        p | beam.Create(pairs) | RunInference(handler)
        | beam.Map(lambda r: repr((r.example, float(r.inference)))) | beam.io.WriteToText(str(tmp_path / "scores"))
    )
    result = p.run()
    result.wait_until_finish()
    got = dict(ast.literal_eval(line) for f in tmp_path.glob("scores*") for line in f.read_text().splitlines())
    assert got.keys() == set(pairs) and all(0 <= s <= 1 for s in got.values())
    assert all(abs(got[pair] - s) < 1e-6 for pair, s in zip(pairs, scores))
    c = counters(result)
    assert c["crossencoder"]["pairs_scored"] == len(pairs) and c["RunInference_crossencoder"]["num_inferences"] == len(pairs)
