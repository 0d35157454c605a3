"""--query_clusters: k-means over query vectors in Beam (deterministic, one cluster per query, separated
topics recovered), the cluster id joined onto the nested rows, option checks, and one SciFact run that
mines clustered shards and trains on them with `tripleminer train --batch_by_cluster`."""

from __future__ import annotations

import json
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import run
from conftest import read_jsonl, read_rows
from test_options import mine_settings, pretext_settings
from tripleminer.io.writers import WriteTriples
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import CLUSTER_COLUMN, NESTED_SCHEMA
from tripleminer.trainer.cli import train_main
from tripleminer.trainer.data import NegativeMix, TripleStream, list_row_groups, training_loader
from tripleminer.transforms.query_clusters import (NAMESPACE, POINTS_PER_CENTROID, AttachClusters, ClusterQueries, cluster_stats,
                                                   sample_key, train_centroids)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, dim: int = 8, seed: int = 0):
    vectors = unit(np.random.default_rng(seed).standard_normal((n, dim)))
    return [(f"q{i}", v) for i, v in enumerate(vectors)]


def reference_assignment(items, k: int, seed: int):
    """What ClusterQueries must output: train on the first k x 256 by the sample key, assign everyone."""
    sample = sorted(items, key=lambda qv: sample_key(seed, qv[0]))[: k * POINTS_PER_CENTROID]
    centroids = train_centroids(np.stack([v for _, v in sample]), k, seed)
    return [(q, int(np.argmax(centroids @ v))) for q, v in items]


def cluster(items, k: int, seed: int, check):
    def build(p):
        assert_that(p | beam.Create(items, reshuffle=False) | ClusterQueries(k, seed), check)
    return run(build)


def test_assignment_is_deterministic_whatever_the_input_order():
    # 600 diffuse vectors, 2 clusters: the training sample is capped at 512, so which queries train matters too.
    items, k, seed = random_vectors(600), 2, 7
    expected = reference_assignment(items, k, seed)
    assert len({c for _, c in expected}) == k
    for order in (items, items[::-1]):
        counters = cluster(order, k, seed, equal_to(expected))
        assert counters[NAMESPACE]["training_queries"] == k * POINTS_PER_CENTROID
        assert counters[NAMESPACE]["queries_assigned"] == len(items)
    other = reference_assignment(items, k, seed + 1)
    assert other != expected  # the seed does decide (a different sample and start)


def test_every_query_gets_one_cluster_and_separated_topics_are_recovered():
    k, per_topic = 4, 25
    rng = np.random.default_rng(1)
    centers = unit(rng.standard_normal((k, 16)))
    items = [(f"t{t}-{i}", unit(centers[t] + 0.05 * rng.standard_normal(16))) for t in range(k) for i in range(per_topic)]

    def check(assigned):
        ids = [q for q, _ in assigned]
        assert sorted(ids) == sorted(q for q, _ in items)  # exactly one cluster a query
        assert all(isinstance(c, int) and 0 <= c < k for _, c in assigned)
        by_topic = {}
        for q, c in assigned:
            by_topic.setdefault(q.split("-")[0], set()).add(c)
        assert all(len(c) == 1 for c in by_topic.values())  # a topic is one cluster ...
        assert len(set().union(*by_topic.values())) == k  # ... and no two topics share one

    counters = cluster(items, k, 3, check)[NAMESPACE]
    assert counters["clusters"] == k
    assert sorted(counters[f"queries_in_{c}"] for c in range(k)) == [per_topic] * k


def test_more_clusters_than_queries_is_a_clear_error():
    with pytest.raises(Exception, match=r"--query_clusters 5: only 3 queries to cluster; choose at most 3"):
        cluster(random_vectors(3), 5, 0, lambda _: None)


def test_rows_get_their_querys_cluster_and_stats_show_the_sizes():
    rows = [{"query_id": q, "query": q, "positive": {"doc_id": d}, "negatives": []} for q, d in
            [("a", "1"), ("a", "2"), ("b", "3"), ("c", "4")]]
    clusters = [("a", 1), ("b", 0), ("c", 1), ("unused", 0)]  # a query without rows adds none

    def build(p):
        out = p | "Rows" >> beam.Create(rows) | AttachClusters(p | "Clusters" >> beam.Create(clusters))
        assert_that(out, equal_to([{**r, CLUSTER_COLUMN: dict(clusters)[r["query_id"]]} for r in rows]))

    counters = run(build)[NAMESPACE]
    assert cluster_stats(2, {**counters, "queries_in_0": 2, "queries_in_1": 2, "training_queries": 4}) == {NAMESPACE: {
        "k": 2, "training_queries": 4, "queries_per_cluster": [2, 2], "rows_per_cluster": [1, 3]}}
    assert cluster_stats(0, counters) == {}


def test_the_column_is_there_only_when_clustering():
    plain, clustered = (WriteTriples("out", "nested", {}, query_clusters=on).schema.remove_metadata() for on in (False, True))
    assert plain.equals(NESTED_SCHEMA)  # off: the shards of a run before the option
    assert clustered.field(CLUSTER_COLUMN).type == pa.int32() and not clustered.field(CLUSTER_COLUMN).nullable
    assert clustered.names == NESTED_SCHEMA.names + [CLUSTER_COLUMN]


@pytest.mark.parametrize("plan, extra, message", [
    (mine_settings, ["--query_clusters", "1"], "at least 2"),
    (mine_settings, ["--query_clusters", "-2"], "at least 2"),
    (mine_settings, ["--query_clusters", "4", "--output_format", "triplet"], "nested layout only"),
    (pretext_settings, ["--query_clusters", "4", "--output_format", "n-tuple"], "nested layout only"),
])
def test_options_refuse_one_cluster_and_flat_layouts(plan, extra, message):
    with pytest.raises(ValueError, match=message):
        plan(*extra)


def test_options_plan_the_clusters():
    assert mine_settings().triples.output.query_clusters == 0
    s = pretext_settings("--query_clusters", "8")
    assert s.triples.output.query_clusters == 8 and s.triples.config["query_clusters"] == 8


def test_scifact_clusters_feed_batch_by_cluster_training(scifact, tmp_path):
    """40 train queries without a dense source (the queries alone are embedded), 4 clusters, 2 steps."""
    lines = (scifact / "qrels" / "train.tsv").read_text().splitlines()
    qrels = lines[1:][:50]
    wanted_q, wanted_d = {l.split("\t")[0] for l in qrels}, {l.split("\t")[1] for l in qrels}
    corpus = read_jsonl(scifact / "corpus.jsonl")
    docs = [c for c in corpus if c["_id"] in wanted_d] + [c for c in corpus if c["_id"] not in wanted_d][:100]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in docs))
    queries = [q for q in read_jsonl(scifact / "queries.jsonl") if q["_id"] in wanted_q]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels.tsv").write_text("\n".join([lines[0]] + qrels) + "\n")
    out = tmp_path / "out"
    stats = mine.run(["--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
                      "--qrels", str(tmp_path / "qrels.tsv"), "--work_dir", str(tmp_path / "work"), "--output", str(out),
                      "--negatives", "bm25:1,random:1", "--max_seq_length", "64", "--query_clusters", "4", "--seed", "3"])

    rows = read_rows(out)
    assert rows and all(0 <= r[CLUSTER_COLUMN] < 4 for r in rows)
    assert pq.read_schema(next(out.glob("triples-*.parquet"))).field(CLUSTER_COLUMN).type == pa.int32()
    per_query = {}
    for r in rows:
        per_query.setdefault(r["query_id"], set()).add(r[CLUSTER_COLUMN])
    assert all(len(c) == 1 for c in per_query.values())
    clusters = stats["query_clusters"]
    assert clusters["k"] == 4 and sum(clusters["rows_per_cluster"]) == len(rows) == stats["rows"]
    assert sum(clusters["queries_per_cluster"]) == len(queries)
    embed = stats["counters"]["embed"]
    assert embed["query_texts_embedded"] == len(queries) and "doc_texts_embedded" not in embed  # no document embedded for it

    shards, batch_size = str(out / "triples-*.parquet"), 4
    cluster_of = {r["query"]: r[CLUSTER_COLUMN] for r in rows}
    stream = TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:1"), seed=3)
    batches = list(training_loader(stream, batch_size, 0, by_cluster=True, seed=3))
    full = sum(n // batch_size for n in Counter(cluster_of[r["query"]] for r in rows).values())
    assert full > 0 and all(len({cluster_of[q] for q in b.queries}) == 1 for b in batches[:full])
    assert train_main(["--triples", shards, "--batch_by_cluster", "--negatives", "bm25:1", "--batch_size", str(batch_size),
                       "--max_steps", "2", "--max_seq_length", "16", "--output_dir", str(tmp_path / "model"),
                       "--disable_tqdm", "--device", "cpu"]) == 0
