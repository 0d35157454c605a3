"""benchmarks/pretext_quality.py: its rows, the mining cache keyed by the pretext argv, the results merge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from test_pretext import docs  # noqa: F401 (a fixture: the first SciFact abstracts)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
pq = pytest.importorskip("pretext_quality")


def _args(tmp_path: Path, **over) -> argparse.Namespace:
    base = dict(rows=["title", "salient-dense"], mixes=[], rate=0.2, negatives="random:1", seed=13,
                work_dir=str(tmp_path / "pq"))
    return argparse.Namespace(**{**base, **over})


def test_rows_are_each_generator_alone_then_the_mixes(tmp_path):
    mix = pq.parse_mix_row("t+s=--generators title:0.1,salient:0.1 --salient_scorer bm25")
    rows = pq.row_args(_args(tmp_path, mixes=[mix]))
    assert rows == [("title", ["--generators", "title:0.2"]),
                    ("salient-dense", ["--generators", "salient:0.2", "--salient_scorer", "dense"]),
                    ("t+s", ["--generators", "title:0.1,salient:0.1", "--salient_scorer", "bm25"])]
    for bad in ("no-equals", "=--generators title", "x=--rate 0.1"):
        with pytest.raises(argparse.ArgumentTypeError, match="LABEL=--generators"):
            pq.parse_mix_row(bad)


def test_mined_rows_are_cached_by_their_argv(docs, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs[:20]), encoding="utf-8")
    args = _args(tmp_path)
    first = pq.mine_row("title", ["--generators", "title:1"], corpus, args)
    assert first["rows"] == sum(1 for d in docs[:20] if d["title"]) and first["triples"].endswith("title/triples-*.parquet")
    mined = Path(args.work_dir, "rows", "title.mined.json")
    mined.write_text(json.dumps({**json.loads(mined.read_text()), "mine_s": -1.0}))  # marks the cached copy
    assert pq.mine_row("title", ["--generators", "title:1"], corpus, args)["mine_s"] == -1.0
    half = pq.mine_row("title", ["--generators", "title:0.5"], corpus, args)  # another argv mines again
    assert half["mine_s"] >= 0 and 0 < half["rows"] < first["rows"]


def test_results_keep_other_rows_and_replace_retrained_ones(tmp_path):
    path = tmp_path / "results.json"
    cell = {"negatives": "random:1", "seed": 13, "epochs": 1, "eval_precision": "bf16"}
    pq.merge_results(path, [{"row": "a", "train_args": "", "nDCG@10": 0.1, **cell},
                            {"row": "b", "train_args": "", "nDCG@10": 0.2, **cell}])
    merged = pq.merge_results(path, [{"row": "a", "train_args": "", "nDCG@10": 0.3, **cell},
                                     {"row": "a", "train_args": "--learning_rate 2e-5", "nDCG@10": 0.4, **cell},
                                     {"row": "b", "train_args": "", "nDCG@10": 0.5, **cell, "seed": 14},
                                     {"row": "b", "train_args": "", "nDCG@10": 0.6, **cell, "eval_precision": "fp32"}])
    assert sorted((r["row"], r["train_args"], r["seed"], r["eval_precision"], r["nDCG@10"]) for r in merged) == [
        ("a", "", 13, "bf16", 0.3), ("a", "--learning_rate 2e-5", 13, "bf16", 0.4), ("b", "", 13, "bf16", 0.2),
        ("b", "", 13, "fp32", 0.6), ("b", "", 14, "bf16", 0.5)]
    assert json.loads(path.read_text()) == merged
