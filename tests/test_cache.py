"""The content-addressed cache behind embeddings and cross-encoder scores: each distinct payload is
computed once, a rerun computes nothing, and values survive the Parquet round trip bit for bit."""

import ast
from typing import List

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions

from tripleminer.pipelines.stats import counters
from tripleminer.transforms.cache import SCORES, VECTORS, CachedCompute, content_key


class _Length(ModelHandler):
    """A cheap real "model" behind RunInference: the length of a text, as a score, in batches of 2-3."""

    def __init__(self) -> None:
        super().__init__(min_batch_size=2, max_batch_size=3)
        self.computed = Metrics.counter("test", "computed")

    def load_model(self):
        return len

    def run_inference(self, batch: List[str], model, inference_args=None) -> List[PredictionResult]:
        assert 1 <= len(batch) <= 3
        self.computed.inc(len(batch))
        return [PredictionResult(t, float(model(t))) for t in batch]

    def get_metrics_namespace(self) -> str:
        return "test_runinference"


def run(items, cache_dir, out_dir):
    out_dir.mkdir()
    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
    (
        p | beam.Create(items)
        | CachedCompute(str(cache_dir), "len", content_key, _Length(), SCORES, "test", "hits")
        | beam.Map(repr) | beam.io.WriteToText(str(out_dir / "values"))
    )
    result = p.run()
    result.wait_until_finish()
    values = sorted(ast.literal_eval(line) for f in out_dir.glob("values*") for line in f.read_text().splitlines())
    run.inferences = counters(result).get("test_runinference", {}).get("num_inferences", 0)  # RunInference's own count
    return values, counters(result).get("test", {})


def test_each_payload_is_computed_once_and_a_rerun_computes_nothing(tmp_path):
    items = [("a", "x"), ("b", "yy"), ("c", "x"), ("a", "x"), ("d", "zzz"), ("e", "yy"), ("f", "wwww")]
    expected = [("a", 1.0), ("b", 2.0), ("c", 1.0), ("d", 3.0), ("e", 2.0), ("f", 4.0)]  # one value per distinct id
    values, count = run(items, tmp_path / "cache", tmp_path / "o1")
    assert values == expected and count == {"computed": 4} and run.inferences == 4  # x, yy, zzz, wwww
    files = list((tmp_path / "cache").glob("len-*.parquet"))
    assert files and sorted(r["score"] for f in files for r in pq.read_table(f).to_pylist()) == [1.0, 2.0, 3.0, 4.0]
    values, count = run(items, tmp_path / "cache", tmp_path / "o2")
    assert values == expected and count == {"hits": 6} and run.inferences == 0  # only misses reach RunInference
    values, count = run(items + [("g", "vvvvv")], tmp_path / "cache", tmp_path / "o3")  # a grown input
    assert values == expected + [("g", 5.0)] and count == {"hits": 6, "computed": 1}


def test_vectors_round_trip_through_parquet(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    pq.write_table(VECTORS.to_table([f"k{i}" for i in range(5)], vectors), tmp_path / "c.parquet")
    back = list(VECTORS.from_table(pq.read_table(tmp_path / "c.parquet")))
    assert [k for k, _ in back] == [f"k{i}" for i in range(5)]
    assert np.array_equal(np.stack([v for _, v in back]), vectors)
    back[0][1][0] = 1.0  # writable for downstream code
    mixed = pa.concat_tables([VECTORS.to_table(["a"], vectors[:1]), VECTORS.to_table(["b"], vectors[:1, :6])])
    with pytest.raises(ValueError, match="different dimensions"):
        list(VECTORS.from_table(mixed))


def test_scores_round_trip_bit_for_bit(tmp_path):
    scores = np.random.default_rng(1).random(9)
    pq.write_table(SCORES.to_table([str(i) for i in range(9)], scores), tmp_path / "s.parquet")
    assert [v for _, v in SCORES.from_table(pq.read_table(tmp_path / "s.parquet"))] == scores.tolist()


def test_content_key_separates_parts():
    assert content_key("ab", "c") != content_key("a", "bc") and len(content_key("x")) == 32
