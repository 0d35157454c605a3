"""FAISS shards: the merged top-k of S exact shards is the top-k of one index over the corpus."""

import numpy as np
import pytest

from tripleminer.index import dense
from tripleminer.index.shards import merge_top_k, shard_of


def _vectors(n, dim=32, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sharded_search(ids, vectors, queries, k, num_shards, settings, tmp_path):
    parts = [[] for _ in queries]
    for s in range(num_shards):
        members = [i for i, d in enumerate(ids) if shard_of(d, num_shards) == s]
        if not members:
            continue
        out = tmp_path / f"s{num_shards}-{s}"
        dense.build([ids[i] for i in members], vectors[members], settings, str(out))
        found, scores = dense.AnnShard(str(out)).search(queries, k)
        for q in range(len(queries)):
            parts[q].append((found[q], scores[q]))
    return [merge_top_k(p, k) for p in parts]


@pytest.mark.parametrize("num_shards", [2, 3, 7])
def test_merged_shards_equal_single_exact_index(num_shards, tmp_path):
    ids = [f"doc-{i}" for i in range(500)]
    vectors, queries = _vectors(500), _vectors(20, seed=1)
    single = sharded_search(ids, vectors, queries, 50, 1, dense.AnnSettings(), tmp_path)
    merged = sharded_search(ids, vectors, queries, 50, num_shards, dense.AnnSettings(), tmp_path)
    assert [m[0] for m in merged] == [s[0] for s in single]
    np.testing.assert_allclose([m[1] for m in merged], [s[1] for s in single], rtol=1e-5)
    # and equal to brute force
    brute = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :50]
    assert [s[0] for s in single] == [[ids[i] for i in row] for row in brute]


def test_shard_assignment_is_stable_and_balanced():
    counts = np.bincount([shard_of(f"d{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 850
    assert shard_of("d17", 4) == shard_of("d17", 4)


def test_ivf_and_hnsw_settings(tmp_path):
    ids = [f"d{i}" for i in range(2000)]
    vectors, queries = _vectors(2000), _vectors(10, seed=3)
    exact = sharded_search(ids, vectors, queries, 10, 1, dense.AnnSettings(), tmp_path / "flat")
    for factory in ("IVF16,Flat", "HNSW16"):
        approx = sharded_search(ids, vectors, queries, 10, 1, dense.AnnSettings(factory, nprobe=16, ef_search=256), tmp_path / factory)
        recall = np.mean([len(set(a[0]) & set(e[0])) / 10 for a, e in zip(approx, exact)])
        assert recall >= 0.95, (factory, recall)  # nprobe = all cells / wide efSearch: near exact
    with pytest.raises(ValueError, match="too small to train"):
        dense.build(ids[:100], vectors[:100], dense.AnnSettings("IVF64,Flat"), str(tmp_path / "small"))
    with pytest.raises(ValueError, match="bad FAISS factory"):
        dense.AnnSettings("NotAnIndex")
