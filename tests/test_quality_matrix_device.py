"""benchmarks/quality_matrix_device.py: texts travel by id, and the pack -> run -> score path on CPU gives
the cells quality_matrix.py itself measures."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
qmd = pytest.importorskip("quality_matrix_device")
qm = qmd.qm


def passage(doc_id: str, title, text: str, source: str = "ann") -> dict:
    return {"doc_id": doc_id, "title": title, "text": text, "source": source}


def test_texts_are_blanked_and_filled_back_from_the_corpus():
    corpus = {"d1": "Title one body one", "d2": "body two", "d3": "T3 body three"}
    queries = {"q1": "what is one"}
    row = {"query_id": "q1", "query": "what is one", "positive": passage("d1", "Title one", "body one", "qrel"),
           "negatives": [passage("d2", None, "body two"), passage("d3", "T3", "body three", "random")]}
    table = pa.Table.from_pylist([row], schema=qm.NESTED_SCHEMA)
    stripped = qmd.strip_texts(table)
    kept = stripped.to_pylist()[0]
    assert kept["query"] == "" and {p["text"] for p in [kept["positive"], *kept["negatives"]]} == {""}
    assert [n["source"] for n in kept["negatives"]] == ["ann", "random"] and kept["positive"]["doc_id"] == "d1"
    filled = qmd.fill_texts(stripped, queries, corpus)
    assert qmd.texts_of(filled) == qmd.texts_of(table) == [("what is one", "Title one body one", "body two", "T3 body three")]
    assert qmd.texts_of(qmd.fill_texts(stripped, queries, {**corpus, "d2": "another text"})) != qmd.texts_of(table)


def test_score_refuses_a_results_file_of_another_device(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"dataset": "scifact", "row": "in-batch", "recipe": "st", "seed": 13, "settings": {"eval_bf16": True}}]))
    (tmp_path / "runs").mkdir()
    with qmd.lzma.open(tmp_path / "runs" / "runs-0.jsonl.xz", "wt") as f:
        f.write(json.dumps({"dataset": "scifact", "row": "zero-shot", "recipe": "none", "seed": None, "best_spec": None,
                            "device": "cuda", "settings": {"quick": False}, "run": {}}) + "\n")
    with pytest.raises(SystemExit, match="another device"):
        qmd.main(["score", "--runs", str(tmp_path / "runs"), "--results", str(results)])


def test_cuda_cells_are_refused_by_a_cpu_run(tmp_path):
    args = qm.parse_args(["--results", str(tmp_path / "r.json")])
    cell = {"dataset": "scifact", "row": "in-batch", "recipe": "ours", "seed": 13, "quick": False,
            "settings": {"eval_bf16": False, "device": "cuda"}}
    assert qm.precision_mismatch([cell], args) == ["scifact in-batch ours seed 13"]
    assert qm.precision_mismatch([cell], qm.parse_args(["--device", "cuda"])) == []
    assert qm.precision_mismatch([cell], qm.parse_args(["--eval_precision", "fp32"])) == ["scifact in-batch ours seed 13"]


@pytest.mark.slow
def test_pack_run_score_on_cpu_matches_the_matrix(tmp_path, scifact):
    """The whole device path on a --quick SciFact slice, with cpu standing in for cuda: the zero-shot cell
    equals quality_matrix.py's own (fp32 evaluation), the in-batch cell trains and scores."""
    work, common = tmp_path / "work", ["--quick", "--datasets", "scifact", "--data_dir", str(scifact.parent)]
    qm.main([*common, "--mine_only", "--rows", "in-batch", "--work_dir", str(work), "--results", str(tmp_path / "none.json")])
    assert not (tmp_path / "none.json").exists()  # mining only: no cell was measured
    qmd.main(["pack", "--quick", "--work_dir", str(work), "--bundle", str(tmp_path / "bundle"), "--datasets", "scifact",
              "--rows", "in-batch", "--seeds", "13", "--recipes", "st", "--no_model"])
    assert not (tmp_path / "bundle" / "model").exists()
    with tarfile.open(tmp_path / "bundle" / qmd.BUNDLE_TAR) as tar:
        tar.extractall(tmp_path / "unpacked")
    cells = json.loads((tmp_path / "unpacked" / qmd.CELLS).read_text())
    assert [(c["row"], c["recipe"]) for c in cells] == [("in-batch", "st"), ("zero-shot", "none")]
    qmd.main(["run", "--bundle", str(tmp_path / "unpacked"), "--model", qm.default_model(), "--out", str(tmp_path / "out"),
              "--work_dir", str(tmp_path / "scratch"), "--workers", "1", "--device", "cpu"])
    qmd.main(["score", "--runs", str(tmp_path / "out"), "--work_dir", str(work), "--results", str(tmp_path / "gpu.json")])
    device = {r["row"]: r for r in json.loads((tmp_path / "gpu.json").read_text())}
    assert set(device) == {"in-batch", "zero-shot"} and device["in-batch"]["train_rows"] > 0
    assert all(0 < r["nDCG@10"] <= 1 and r["settings"]["device"] == "cpu" and r["quick"] for r in device.values())
    qm.main([*common, "--rows", "zero-shot", "--eval_precision", "fp32", "--work_dir", str(work), "--results", str(tmp_path / "cpu.json")])
    here = json.loads((tmp_path / "cpu.json").read_text())[0]
    assert device["zero-shot"]["nDCG@10"] == pytest.approx(here["nDCG@10"], abs=1e-4)
    assert device["zero-shot"]["MRR@10"] == pytest.approx(here["MRR@10"], abs=1e-4)
