"""`tripleminer train` end to end on a tiny shard set, and its --help."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sentence_transformers import SentenceTransformer

from tripleminer.schemas.outputs import NESTED_SCHEMA
from tripleminer.trainer.arguments import DataArguments, ModelArguments, TrainingArguments
from tripleminer.trainer.cli import train_main
from tripleminer.trainer.model import resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLAIMS = [
    ("Vitamin D lowers fracture risk.", "Vitamin D supplements and hip fractures", "Vitamin C and colds"),
    ("Statins reduce mortality.", "Statin therapy and all-cause death", "Cholesterol synthesis"),
    ("Smoking causes lung cancer.", "Tobacco smoke and lung carcinoma", "Air pollution in cities"),
    ("Aspirin prevents heart attacks.", "Low-dose aspirin in cardiology", "Gastric bleeding"),
    ("Exercise improves memory.", "Aerobic training and hippocampal volume", "Muscle fibre types"),
    ("Sleep loss impairs insulin action.", "Sleep restriction and glucose tolerance", "Circadian genes"),
]


def doc(doc_id: str, text: str, **extra) -> dict:
    return {"doc_id": doc_id, "title": None, "text": text, **extra}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    rows = [
        {
            "query_id": f"q{i}",
            "query": claim,
            "positive": doc(f"p{i}", positive, source="qrel", label=1.0, clicks=None, impressions=None, ctr=None),
            "negatives": [doc(f"n{i}", negative, source="bm25", rank=1, score=9.0),
                          doc(f"p{(i + 1) % len(CLAIMS)}", CLAIMS[(i + 1) % len(CLAIMS)][1], source="gold", rank=None,
                              score=None)],
        }
        for i, (claim, positive, negative) in enumerate(CLAIMS)
    ]
    folder = tmp_path_factory.mktemp("triples")
    table = pa.Table.from_pylist(rows, schema=NESTED_SCHEMA)
    pq.write_table(table.slice(0, 4), folder / "triples-00000-of-00002.parquet")
    pq.write_table(table.slice(4), folder / "triples-00001-of-00002.parquet")
    return str(folder / "triples-*.parquet")


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for cls in (ModelArguments, DataArguments, TrainingArguments):
        for field in dataclasses.fields(cls):
            assert f"--{field.name}" in text
            assert field.metadata["help"].split()[0] in text


@pytest.mark.slow
def test_train_writes_a_loadable_fine_tuned_model(shards, tmp_path):
    out = tmp_path / "model"
    argv = ["--triples", shards, "--negatives", "bm25:1,gold:1", "--batch_size", "2", "--max_steps", "2",
            "--gradient_accumulation_steps", "2", "--max_seq_length", "16", "--learning_rate", "1e-4",
            "--queue_size", "8", "--queue_momentum", "0.9", "--logging_steps", "1", "--output_dir", str(out),
            "--disable_tqdm", "--device", "cpu"]
    assert train_main(argv) == 0
    saved = json.loads((out / "tripleminer_train_args.json").read_text())
    assert saved["max_steps"] == 2 and saved["queue_size"] == 8
    trained = SentenceTransformer(str(out), device="cpu")
    base = SentenceTransformer(resolve_model(None), device="cpu")
    assert trained.max_seq_length == 16
    texts = [claim for claim, _, _ in CLAIMS]
    moved = (trained.encode(texts, convert_to_tensor=True) - base.encode(texts, convert_to_tensor=True)).norm(dim=1)
    assert torch.all(moved > 1e-4)


def test_train_refuses_a_glob_that_matches_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_main(["--triples", str(tmp_path / "none-*.parquet"), "--output_dir", str(tmp_path / "m")])
