"""Shared fixtures: where the real data is, small helpers to run the mine pipeline, and a small trained cross-encoder."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pyarrow.parquet as pq
import pytest

from tripleminer.pipelines import mine
from tripleminer.rerank import train

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def data_dir() -> Path:
    """The shared data folder: $TRIPLEMINER_DATA, default ../shared/data beside the repo."""
    path = Path(os.environ.get("TRIPLEMINER_DATA", REPO.parent / "shared" / "data"))
    if not (path / "scifact" / "corpus.jsonl").exists():
        raise FileNotFoundError(f"SciFact not found under {path}; set TRIPLEMINER_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def scifact() -> Path:
    return data_dir() / "scifact"


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_rows(output_dir: Path) -> List[Dict[str, Any]]:
    files = sorted(glob.glob(str(output_dir / "triples-*.parquet")))
    assert files, f"no shards in {output_dir}"
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def canonical(rows: List[Dict[str, Any]]) -> List[str]:
    """Rows as sorted JSON strings: equal for equal outputs whatever the shard or row order."""
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


SHARED_DATA_FIXTURES = frozenset({"scifact"})


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Safety net for the `slow` marker: a test that reaches the shared data through a fixture is
    slow even where a new test forgot the marker, so `-m "not slow"` never needs ../shared/data."""
    for item in items:
        if SHARED_DATA_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


# A real cross-encoder on SciFact, for the denoising and model-handler tests.

# Small enough for CI on 2 CPU cores: 300 training rows x (positive + 1 BM25 + 1 random negative), titles
# and the start of abstracts (64 tokens), 2 epochs of batch 8 = 225 steps. Fewer steps do not get past
# predicting the class prior (measured: 19-170 steps of batch 16 leave every pair at ~0.3).
MINE_ARGS = ["--negatives", "bm25:1@10-100,random:1", "--seed", "13"]
TRAIN_ARGS = ["--max_rows", "300", "--negatives_per_positive", "all", "--max_length", "64", "--epochs", "2",
              "--batch_size", "8", "--learning_rate", "1e-4", "--seed", "13", "--device", "cpu"]


def cache_dir() -> Path:
    """Where trained test models are kept between runs ($TRIPLEMINER_TEST_CACHE, default work/test-cache)."""
    return Path(os.environ.get("TRIPLEMINER_TEST_CACHE", REPO / "work" / "test-cache"))


@pytest.fixture(scope="session")
def trained_ce(scifact, tmp_path_factory) -> Path:
    """A cross-encoder trained by `tripleminer train-cross-encoder` on mined SciFact triples, trained
    once per settings: the directory name hashes the mine and train arguments."""
    key = hashlib.blake2b(json.dumps([MINE_ARGS, TRAIN_ARGS]).encode(), digest_size=8).hexdigest()
    model_dir = cache_dir() / f"ce-{key}"
    if (model_dir / train.SETTINGS_FILE).exists():
        return model_dir
    work = tmp_path_factory.mktemp("ce-train")
    mine.run([
        "--corpus", str(scifact / "corpus.jsonl"), "--queries", str(scifact / "queries.jsonl"),
        "--qrels", str(scifact / "qrels" / "train.tsv"), "--output", str(work / "mined"),
        "--work_dir", str(work / "work"), *MINE_ARGS,
    ])
    staging = work / "model"
    assert train.main(["--train_data", str(work / "mined" / "triples-*.parquet"), "--output_dir", str(staging), *TRAIN_ARGS]) == 0
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.move(str(staging), str(model_dir))  # whole or not at all: the settings file marks a finished model
    return model_dir
