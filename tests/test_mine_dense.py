"""Dense (ann) negatives end to end on a slice of SciFact with the real MiniLM: the rank window
really is the window of the model's ranking, sharded search equals one index, the embedding cache
makes reruns embed nothing, and the positive-aware filter holds."""

import glob
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import canonical, read_jsonl, read_rows
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.embed import text_key

pytestmark = pytest.mark.slow  # the real MiniLM on a SciFact slice


@pytest.fixture(scope="module")
def slice_dir(scifact, tmp_path_factory):
    """The first 60 train queries, their judged documents and 240 other documents."""
    d = tmp_path_factory.mktemp("dense")
    lines = (scifact / "qrels" / "train.tsv").read_text().splitlines()
    qrels = [l for l in lines[1:]][:80]
    wanted_q = {l.split("\t")[0] for l in qrels}
    wanted_d = {l.split("\t")[1] for l in qrels}
    corpus = read_jsonl(scifact / "corpus.jsonl")
    docs = [c for c in corpus if c["_id"] in wanted_d] + [c for c in corpus if c["_id"] not in wanted_d][:240]
    (d / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in docs))
    queries = [q for q in read_jsonl(scifact / "queries.jsonl") if q["_id"] in wanted_q]
    (d / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (d / "qrels.tsv").write_text("\n".join([lines[0]] + qrels) + "\n")
    return d


def run(d, out, *extra):
    return mine.run([
        "--corpus", str(d / "corpus.jsonl"), "--queries", str(d / "queries.jsonl"), "--qrels", str(d / "qrels.tsv"),
        "--work_dir", str(d / "work"), "--output", str(out), "--max_seq_length", "128", "--seed", "3", *extra,
    ])


def cache_contents(d):
    """Every vector in the embedding cache, by cache key."""
    files = glob.glob(str(d / "work" / "embeddings" / "*" / "*.parquet"))
    return {r["key"]: np.asarray(r["vector"], dtype=np.float32) for f in files for r in pq.read_table(f).to_pylist()}


@pytest.fixture(scope="module")
def mined(slice_dir):
    stats = run(slice_dir, slice_dir / "out3", "--negatives", "ann:3@11-40", "--ann_shards", "3")
    return stats, read_rows(slice_dir / "out3")


def test_ann_window_is_the_models_ranking_window(mined, slice_dir):
    stats, rows = mined
    docs = read_jsonl(slice_dir / "corpus.jsonl")
    assert stats["counters"]["embed"]["doc_texts_embedded"] == len(docs)
    vectors = cache_contents(slice_dir)
    doc_ids = [d["_id"] for d in docs]
    matrix = np.stack([vectors[text_key("doc", passage_text(d))] for d in docs])
    assert rows and all(len(r["negatives"]) == 3 for r in rows)
    for r in rows:
        scores = matrix @ vectors[text_key("query", r["query"])]
        order = [doc_ids[i] for i in np.argsort(-scores, kind="stable")]
        for n in r["negatives"]:
            assert n["source"] == "ann" and 11 <= n["rank"] <= 40
            assert order.index(n["doc_id"]) + 1 == n["rank"]  # the rank is the doc's rank in the full ranking
            assert n["score"] == pytest.approx(float(scores[doc_ids.index(n["doc_id"])]), abs=1e-5)


def test_shards_equal_single_index_and_cache_skips_embedding(mined, slice_dir):
    _, rows = mined
    stats = run(slice_dir, slice_dir / "out1", "--negatives", "ann:3@11-40", "--ann_shards", "1")
    assert canonical(read_rows(slice_dir / "out1")) == canonical(rows)
    embed = stats["counters"]["embed"]
    assert embed["doc_cache_hits"] == len(read_jsonl(slice_dir / "corpus.jsonl")) and "doc_texts_embedded" not in embed  # rerun: nothing embedded


def test_positive_aware_filter(mined, slice_dir):
    stats = run(slice_dir, slice_dir / "filtered", "--negatives", "ann:5@1-20/top", "--pos_aware_ratio", "0.9")
    vectors = cache_contents(slice_dir)
    docs = {d["_id"]: d for d in read_jsonl(slice_dir / "corpus.jsonl")}
    rows = read_rows(slice_dir / "filtered")
    assert stats["counters"]["filter"]["positive_aware_rejected_candidates"] > 0
    for r in rows:
        q = vectors[text_key("query", r["query"])]
        pos_score = float(q @ vectors[text_key("doc", passage_text(docs[r["positive"]["doc_id"]]))])
        assert r["positive"]["score"] == pytest.approx(pos_score, abs=1e-5)  # kept in the row
        assert all(n["score"] <= 0.9 * pos_score + 1e-6 for n in r["negatives"])



def test_max_positive_rank_drops_rows_whose_positive_ranks_below_unjudged_documents(mined, slice_dir):
    """Every written positive has fewer than K unjudged documents above it in the model's ranking, and
    each row left out is counted: written + dropped = the rows of the unfiltered run."""
    _, all_rows = mined
    stats = run(slice_dir, slice_dir / "weak", "--negatives", "ann:3@11-40", "--max_positive_rank", "3")
    rows = read_rows(slice_dir / "weak")
    dropped = stats["counters"]["filter"]["rows_positive_below_max_positive_rank"]
    assert rows and dropped > 0 and len(rows) + dropped == len(all_rows)
    vectors = cache_contents(slice_dir)
    docs = read_jsonl(slice_dir / "corpus.jsonl")
    matrix = np.stack([vectors[text_key("doc", passage_text(d))] for d in docs])
    judged = {}
    for line in (slice_dir / "qrels.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        judged.setdefault(q, set()).add(d)
    for r in rows:
        scores = matrix @ vectors[text_key("query", r["query"])]
        pos = scores[[d["_id"] for d in docs].index(r["positive"]["doc_id"])]
        above = [d["_id"] for d, s in zip(docs, scores) if s > pos + 1e-6 and d["_id"] not in judged[r["query_id"]]]
        assert len(above) < 3
