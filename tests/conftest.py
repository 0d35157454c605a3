"""Shared fixtures: where the real data is, and small helpers to run the mine pipeline."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pyarrow.parquet as pq
import pytest

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
