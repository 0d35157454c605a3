"""`tripleminer evaluate`: metric values on a hand-checked run, and a real model on a SciFact slice."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tripleminer.trainer.cli import evaluate_main
from tripleminer.trainer.evaluate import BeirSplit, default_data_dir, score

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SCIFACT = default_data_dir() / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason=f"no SciFact at {SCIFACT}")


@pytest.mark.slow  # not data nor a model, but ranx JIT-compiles its metrics with numba: ~10 s warm, ~90 s in a fresh venv
def test_metrics_match_hand_computation():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}, "q3": {"d": 1}}
    run = {"q1": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6}, "q2": {"c": 0.5, "z": 0.4}}  # q3 retrieved nothing
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    metrics = score(qrels, run)
    assert metrics["nDCG@10"] == pytest.approx((ndcg_q1 + 1.0 + 0.0) / 3, rel=1e-6)
    assert metrics["MRR@10"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, rel=1e-6)
    assert metrics["Recall@100"] == pytest.approx((1.0 + 1.0 + 0.0) / 3, rel=1e-6)


@pytest.mark.slow
@needs_scifact
def test_corpus_subset_keeps_every_judged_document():
    split = BeirSplit(SCIFACT, "test", query_limit=5, corpus_limit=20)
    judged = {doc for docs in split.qrels.values() for doc in docs}
    assert len(split.queries) == 5 and judged <= set(split.corpus)
    assert len(split.corpus) == len(judged) + 20


@pytest.mark.slow
@needs_scifact
def test_evaluate_scores_the_bundled_model_on_a_scifact_slice(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["--data_dir", str(SCIFACT), "--query_limit", "8", "--corpus_limit", "40", "--max_seq_length", "64",
            "--device", "cpu", "--output", str(out)]
    assert evaluate_main(argv) == 0
    metrics = json.loads(Path(out).read_text())
    assert set(metrics) == {"nDCG@10", "Recall@100", "MRR@10"}
    assert json.loads(capsys.readouterr().out) == metrics
    assert metrics["Recall@100"] == 1.0  # fewer than 100 documents: every judged one is retrieved
    assert 0.5 < metrics["nDCG@10"] <= 1.0  # MiniLM ranks SciFact's judged abstracts high among ~50


def test_a_link_file_corpus_reads_the_file_it_names(tmp_path):
    """scifact-vague's corpus.jsonl is a one-line link to SciFact's; BeirSplit follows it."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n")
    vague = tmp_path / "vague"
    (vague / "qrels").mkdir(parents=True)
    (vague / "corpus.jsonl").write_text("../base/corpus.jsonl\n")
    (vague / "queries.jsonl").write_text(json.dumps({"_id": "v1", "text": "t b"}) + "\n")
    (vague / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nv1\td1\t1\n")
    split = BeirSplit(vague, "test")
    assert list(split.corpus) == ["d1"] and "body" in split.corpus["d1"] and split.queries == {"v1": "t b"}
