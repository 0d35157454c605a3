"""ShardedSearch (transforms/retrieval.py) over real index shards built by BuildBM25Shards and
BuildAnnShards on a handful of hand-made documents in a temporary work dir: the merge of S shards'
top-k is the one exact ranking (ranks 1..k, ties by doc id even across shards), whatever S (empty
shards included) and the query batching; BM25 queries matching nothing are counted, not emitted;
and a published shard is reused, never rebuilt."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that

from beam_helpers import run
from tripleminer.index import bm25, dense
from tripleminer.index.shards import merge_top_k, shard_of
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.retrieval import BuildAnnShards, BuildBM25Shards, ShardedSearch, publish_shard

Ranking = Dict[str, Tuple[List[str], List[float]]]  # query id -> doc ids and scores, best first


def check_ranking(source: str, expected: Ranking):
    """Matcher: one candidate list per expected query, ranks 1..n, the expected ids in order, the
    expected scores (float32 indices: to 1e-6)."""

    def _check(found: List[Tuple[str, dict]]) -> None:
        got = dict(found)
        assert len(got) == len(found) and set(got) == set(expected), (sorted(got), sorted(expected))
        for qid, (ids, scores) in expected.items():
            cand = got[qid]
            assert cand["source"] == source and cand["doc_ids"] == ids, (qid, cand["doc_ids"], ids)
            assert cand["ranks"] == list(range(1, len(ids) + 1)), (qid, cand["ranks"])
            assert cand["scores"] == pytest.approx(scores, rel=1e-6, abs=1e-6), (qid, cand["scores"], scores)

    return _check


def exact(ranking: Ranking, k: int) -> Ranking:
    """The top-k of a ranking with ties broken by doc id (the merge's documented order)."""
    return {q: merge_top_k([(ids, scores)], k) for q, (ids, scores) in ranking.items()}


def assert_no_tie_at(ranking: Ranking, k: int) -> None:
    """A top-k is only unique when the k-th and (k+1)-th scores differ: check the test's own inputs."""
    for q, (_, scores) in ranking.items():
        if len(scores) > k:
            assert scores[k - 1] != pytest.approx(scores[k]), (q, scores)


# ------------------------------------------------------------------ BM25

DOCS = [{"doc_id": f"doc-{i}", "title": title, "text": text} for i, (title, text) in enumerate([
    ("Vitamin D", "Vitamin D supplements lower the risk of hip fractures in older adults."),
    ("Bone density", "Calcium and vitamin D intake preserve bone density."),
    ("Statins", "Statin therapy reduces cholesterol and cardiovascular mortality."),
    ("Aspirin", "Low dose aspirin prevents heart attacks but raises bleeding risk."),
    ("Smoking", "Tobacco smoking causes lung cancer and heart disease."),
    ("Fractures", "Falls cause most hip fractures; exercise lowers the risk of falls."),
    ("Sleep", "Sleep loss impairs insulin sensitivity in healthy adults."),
    ("Exercise", "Aerobic exercise improves memory and heart health."),
    ("Cholesterol", "Dietary cholesterol has a small effect on blood cholesterol."),
    ("Cancer screening", "Lung cancer screening with CT lowers lung cancer mortality."),
])]
QUERIES = [("q-fracture", "vitamin d and hip fractures"), ("q-heart", "heart attack risk"),
           ("q-lung", "lung cancer mortality"), ("q-none", "zzzz qqqq")]  # q-none matches no term


def single_bm25_ranking(folder: Path, settings: bm25.BM25Settings, docs: Sequence[dict] = DOCS) -> Ranking:
    """One BM25 index over the whole corpus, outside Beam: the ranking the shards must reproduce."""
    bm25.build([d["doc_id"] for d in docs], [passage_text(d) for d in docs], settings, str(folder / "oracle"))
    ids, scores = bm25.BM25Shard(str(folder / "oracle")).search([q for _, q in QUERIES], len(docs))
    ranking = {}
    for (qid, _), row_ids, row_scores in zip(QUERIES, ids, scores):
        kept = [(d, s) for d, s in zip(row_ids, row_scores) if s > 0.0]  # min_score=0: no term matched
        if kept:
            ranking[qid] = ([d for d, _ in kept], [s for _, s in kept])
    return exact(ranking, len(docs))


def search_bm25(docs: Sequence[dict], shards: int, expected_by_work_dir: Dict[str, Ranking]) -> None:
    """In one pipeline, for each work dir: build `shards` BM25 shards of `docs` there (or reuse what
    is published) and check the merged ranking is the expected one."""
    def build(p: beam.Pipeline) -> None:
        docs_in = p | "Docs" >> beam.Create(docs)
        queries = p | "Queries" >> beam.Create(QUERIES)
        for i, (work, expected) in enumerate(expected_by_work_dir.items()):
            index = docs_in | f"Build {i}" >> BuildBM25Shards(bm25.BM25Settings(), shards, work)
            out = queries | f"Search {i}" >> ShardedSearch("bm25", index, shards, len(docs), min_score=0.0)
            assert_that(out, check_ranking("bm25", expected), label=f"Check {work}")

    run(build)


def test_bm25_shards_merge_to_one_exact_ranking(tmp_path):
    settings = bm25.BM25Settings()
    assert {shard_of(d["doc_id"], 2) for d in DOCS} == {0, 1}  # both shards hold documents
    full = single_bm25_ranking(tmp_path, settings)
    assert set(full) == {"q-fracture", "q-heart", "q-lung"} and all(len(ids) >= 3 for ids, _ in full.values())
    assert_no_tie_at(full, 2)
    work = str(tmp_path / "work")

    def build(p: beam.Pipeline) -> None:
        docs = p | "Docs" >> beam.Create(DOCS)
        queries = p | "Queries" >> beam.Create(QUERIES)
        for shards, depth, batch in ((2, len(DOCS), 512), (2, 2, 2), (1, len(DOCS), 512)):
            label = f"{shards}shards-top{depth}-batch{batch}"
            index = docs | f"Build {label}" >> BuildBM25Shards(settings, shards, work)
            out = queries | f"Search {label}" >> ShardedSearch("bm25", index, shards, depth, batch_size=batch, min_score=0.0)
            assert_that(out, check_ranking("bm25", exact(full, depth)), label=f"Check {label}")

    c = run(build)
    assert c["retrieval"]["bm25_queries_without_match"] == 3  # q-none, once per search
    assert c["retrieval"]["bm25_shard_queries"] == 4 * (2 + 2 + 1)  # every query batch goes to every shard
    (settings_dir,) = Path(work, "indices").iterdir()  # one folder per kind and settings
    built = sorted(f.name for f in settings_dir.iterdir())
    assert len(built) == 3 and not [b for b in built if b.startswith(".building-")]  # 2 + 1 shards, the 2-shard set once


def test_bm25_shard_is_rebuilt_when_another_shards_edit_changes_the_corpus_statistics(tmp_path):
    work = str(tmp_path / "work")
    edited = [dict(d, text=d["text"].replace("bleeding", "fractures")) if d["doc_id"] == "doc-3" else d for d in DOCS]
    assert shard_of("doc-3", 2) != shard_of("doc-0", 2) == shard_of("doc-5", 2)  # the edit is in the other shard
    before = single_bm25_ranking(tmp_path / "before", bm25.BM25Settings())
    after = single_bm25_ranking(tmp_path / "after", bm25.BM25Settings(), edited)
    assert before["q-fracture"][1] != pytest.approx(after["q-fracture"][1])  # the edit changes doc-0's and doc-5's scores
    search_bm25(DOCS, 2, {work: before})
    # A fresh work dir gets the edited corpus right; the reused one does not (its "Check <work>" fails).
    search_bm25(edited, 2, {str(tmp_path / "fresh"): after, work: after})


# ------------------------------------------------------------------ dense (ann)

# Unit vectors: b and h are equal (a tie across the two shards), and c/f, c/g tie for some queries.
VECTORS = {
    "a": [1.0, 0.0, 0.0], "b": [0.8, 0.6, 0.0], "c": [0.6, 0.8, 0.0], "d": [0.0, 1.0, 0.0],
    "e": [0.0, 0.0, 1.0], "f": [0.6, 0.0, 0.8], "g": [0.8, 0.0, 0.6], "h": [0.8, 0.6, 0.0],
}
QUERY_VECTORS = [("q1", [1.0, 0.0, 0.0]), ("q2", [0.6, 0.8, 0.0]), ("q3", [0.6, 0.0, 0.8])]


def brute_force(k: int) -> Ranking:
    """Exact cosine ranking by hand-made vectors (all unit length), ties by doc id."""
    ids = sorted(VECTORS)
    matrix = np.array([VECTORS[d] for d in ids], dtype=np.float32)
    ranking = {}
    for qid, q in QUERY_VECTORS:
        scores = matrix @ np.asarray(q, dtype=np.float32)
        ranking[qid] = (ids, [float(s) for s in scores])
    return exact(ranking, k)


def test_ann_shards_merge_to_one_exact_ranking_with_ties_by_doc_id(tmp_path):
    depth = 4
    assert shard_of("b", 2) != shard_of("h", 2)  # the b/h tie is decided by the merge, not inside one shard
    assert len({shard_of(d, 8) for d in VECTORS}) < 8  # 8 shards: some are empty
    want = brute_force(depth)
    assert want["q1"][0] == ["a", "b", "g", "h"] and want["q2"][0] == ["c", "b", "h", "d"]  # the ties, by id
    assert want["q3"][0] == ["f", "g", "e", "a"]
    assert_no_tie_at(brute_force(len(VECTORS)), depth)
    work = str(tmp_path / "work")

    def build(p: beam.Pipeline) -> None:
        vectors = p | "Vectors" >> beam.Create(sorted(VECTORS.items()))
        queries = p | "Queries" >> beam.Create(QUERY_VECTORS)
        for shards in (1, 2, 8):
            index = vectors | f"Build {shards}" >> BuildAnnShards(dense.AnnSettings(), shards, work, "hand-made")
            out = queries | f"Search {shards}" >> ShardedSearch("ann", index, shards, depth, batch_size=2)
            assert_that(out, check_ranking("ann", want), label=f"Check {shards}")

    c = run(build)
    assert "ann_queries_without_match" not in c["retrieval"]


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="unknown ranked source 'tfidf'"):
        ShardedSearch("tfidf", None, 1, 10)


# ------------------------------------------------------------------ publishing


def test_a_published_shard_is_reused_and_new_content_gets_its_own_folder(tmp_path):
    built: List[str] = []

    def build(local: str) -> None:
        built.append(local)
        Path(local, "index.bin").write_text("index")
        Path(local, bm25.SETTINGS_FILE).write_text("{}")  # the marker: written last by a real build

    def publish(content: bytes) -> str:
        return publish_shard("bm25", str(tmp_path), "key", 0, hashlib.blake2b(content, digest_size=10), build)

    first = publish(b"docs v1")
    assert publish(b"docs v1") == first and len(built) == 1  # already published: not rebuilt
    second = publish(b"docs v2")
    assert second != first and len(built) == 2
    assert sorted(os.listdir(Path(first).parent)) == sorted([Path(first).name, Path(second).name])  # no temp folders
    assert sorted(os.listdir(first)) == sorted(["index.bin", bm25.SETTINGS_FILE])


def test_an_unfinished_build_is_never_taken_for_a_published_shard(tmp_path):
    def crash(local: str) -> None:
        Path(local, "index.bin").write_text("half")
        raise RuntimeError("worker died (test)")

    content = hashlib.blake2b(b"docs", digest_size=10)
    with pytest.raises(RuntimeError):
        publish_shard("bm25", str(tmp_path), "key", 0, content, crash)
    folder = tmp_path / "indices" / "bm25-key" / f"shard-0-{content.hexdigest()}"
    assert not folder.exists()  # only the temporary .building- folder holds the half-built index
    rebuilt: List[str] = []
    publish_shard("bm25", str(tmp_path), "key", 0, content,
                  lambda local: (rebuilt.append(local), Path(local, bm25.SETTINGS_FILE).write_text("{}")))
    assert rebuilt and (folder / bm25.SETTINGS_FILE).exists()
