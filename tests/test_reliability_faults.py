"""Faults: transient errors, killed runs, and re-runs into an existing output.

- A transient error is retried by a runner that retries bundles (BundleBasedDirectRunner here, as
  Dataflow and Flink do) without duplicate rows: a failed bundle's outputs and temporary files are
  discarded. The default DirectRunner (FnApiRunner) does not retry bundles; there a failure fails the
  run, leaving no shard and no stats.json, and a rerun with --overwrite cleans up.
- A killed run leaves no partial shard under a final name: shards are written to a temporary folder
  and renamed at the end; stats.json is written last, so a folder without it is an incomplete run.
- A rerun into a non-empty output is refused without --overwrite; with it, a run refused for a bad
  option or input leaves the old output untouched, and a good run replaces every old file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.io import parquetio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from conftest import REPO, canonical, read_rows
from tripleminer.io import writers
from tripleminer.io.readers import InputError
from tripleminer.io.writers import OutputExistsError, WriteTriples
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import NESTED_SCHEMA
from tripleminer.transforms import sample as sample_module

N_DOCS, N_QUERIES = 40, 12
# Tests marked `slow` here run the whole mine pipeline (mine.run, several seconds each, some twice or in a
# subprocess); the two that test the writers alone stay in the fast `-m "not slow"` set.


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    (base / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": f"text on topic {i % 4} item {i}"}) + "\n" for i in range(N_DOCS)))
    (base / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"topic {i % 4} item {i}"}) + "\n" for i in range(N_QUERIES)))
    (base / "qrels.tsv").write_text("".join(f"q{i}\td{i}\t1\nq{i}\td{i + N_QUERIES}\t1\n" for i in range(N_QUERIES)))
    return base


def mine_args(inputs: Path, out: Path, *extra: str) -> List[str]:
    return ["--corpus", str(inputs / "corpus.jsonl"), "--queries", str(inputs / "queries.jsonl"), "--qrels", str(inputs / "qrels.tsv"),
            "--output", str(out), "--work_dir", str(inputs / "work"), "--negatives", "bm25:2,random:1", *extra]


@pytest.fixture(scope="module")
def clean_rows(inputs) -> List[str]:
    out = inputs / "clean"
    mine.run(mine_args(inputs, out))
    return canonical(read_rows(out))


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Transient failures
# --------------------------------------------------------------------------------------------


class FailOnceMidBundle(beam.DoFn):
    """Test-only: on its first attempt, emits some elements, then raises (a marker file makes it once)."""

    def __init__(self, marker: str, after: int) -> None:
        self.marker, self.after = marker, after

    def start_bundle(self) -> None:
        self.seen = 0

    def process(self, element):
        yield element
        self.seen += 1
        if self.seen == self.after and not os.path.exists(self.marker):
            Path(self.marker).touch()
            raise RuntimeError("transient failure (test)")


def _rows(n: int) -> List[dict]:
    return [{"query_id": f"q{i}", "query": f"query {i}",
             "positive": {"doc_id": f"p{i}", "title": "", "text": f"positive {i}", "source": "qrel", "label": 1.0,
                          "clicks": None, "impressions": None, "ctr": None},
             "negatives": [{"doc_id": f"n{i}", "title": "", "text": f"negative {i}", "source": "random", "rank": None, "score": None}]}
            for i in range(n)]


def test_transient_failures_are_retried_without_duplicates(tmp_path, monkeypatch):
    """One failure inside a DoFn after it emitted output, one inside the Parquet writer after it wrote
    a table: both bundles are retried and every row is written exactly once."""
    sink_marker = tmp_path / "sink-failed"
    original = parquetio._ParquetSink.write_record

    def write_then_fail_once(self, writer, table):
        original(self, writer, table)
        if not sink_marker.exists():
            sink_marker.touch()
            raise OSError("transient write failure (test)")

    monkeypatch.setattr(parquetio._ParquetSink, "write_record", write_then_fail_once)
    out = tmp_path / "out"
    rows = _rows(40)
    p = beam.Pipeline(options=PipelineOptions(["--runner", "BundleBasedDirectRunner"]))
    (
        p
        | beam.Create(rows)
        | beam.ParDo(FailOnceMidBundle(str(tmp_path / "dofn-failed"), after=7))
        | WriteTriples(str(out), "nested", {"test": True}, num_shards=2)
    )
    p.run().wait_until_finish()
    assert (tmp_path / "dofn-failed").exists() and sink_marker.exists()  # both failures happened
    written = read_rows(out)
    key = lambda r: (r["query_id"], r["positive"]["doc_id"], r["positive"]["text"], tuple(n["doc_id"] for n in r["negatives"]))  # noqa: E731
    assert sorted(map(key, written)) == sorted(map(key, rows))  # each row exactly once
    assert sorted(f.name for f in out.iterdir()) == ["triples-00000-of-00002.parquet", "triples-00001-of-00002.parquet"]  # no temp leftovers


@pytest.mark.slow
def test_mine_retried_stage_gives_the_same_rows(inputs, clean_rows, tmp_path, monkeypatch):
    """The whole mine pipeline on a bundle-retrying runner, with its sampling stage failing once
    mid-bundle: the same rows as a clean run, none twice."""
    marker = tmp_path / "sample-failed"
    original = sample_module._Sample.process

    def flaky(self, element):
        yield from original(self, element)
        if not marker.exists():
            marker.touch()
            raise RuntimeError("transient failure in sampling (test)")

    monkeypatch.setattr(sample_module._Sample, "process", flaky)
    out = tmp_path / "out"
    mine.run(mine_args(inputs, out, "--runner", "BundleBasedDirectRunner"))
    assert marker.exists()
    rows = read_rows(out)
    assert len({(r["query_id"], r["positive"]["doc_id"]) for r in rows}) == len(rows) == 2 * N_QUERIES
    assert canonical(rows) == clean_rows


@pytest.mark.slow
def test_failure_on_the_default_runner_fails_the_run_cleanly(inputs, clean_rows, tmp_path, monkeypatch):
    """FnApiRunner does not retry bundles: the run fails, with no shard and no stats.json; a rerun
    with --overwrite then writes a clean, complete output."""
    original = sample_module._Sample.process

    def broken(self, element):
        yield from original(self, element)
        raise RuntimeError("permanent failure in sampling (test)")

    monkeypatch.setattr(sample_module._Sample, "process", broken)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="permanent failure in sampling"):
        mine.run(mine_args(inputs, out))
    assert not list(out.glob("triples-*")) and not (out / "stats.json").exists()
    monkeypatch.setattr(sample_module._Sample, "process", original)
    mine.run(mine_args(inputs, out, "--overwrite"))
    assert canonical(read_rows(out)) == clean_rows
    assert sorted(f.name for f in out.iterdir()) == ["dead_letter-00000-of-00001.jsonl", "stats.json", "triples-00000-of-00001.parquet"]


# --------------------------------------------------------------------------------------------
# Killed runs (a subprocess, SIGKILLed at a chosen point)
# --------------------------------------------------------------------------------------------

KILL_SCRIPT = r'''
import os, sys, threading, time
from pathlib import Path
marker, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "write":  # block inside the Parquet writer, after the first table went to the temporary file
    from apache_beam.io import parquetio
    original = parquetio._ParquetSink.write_record
    def write_record(self, writer, table):
        original(self, writer, table)
        Path(marker).touch()
        time.sleep(600)
    parquetio._ParquetSink.write_record = write_record
else:  # block at finalisation, after the first shard was renamed to its final name
    from apache_beam.io.filesystems import FileSystems
    original, lock, done = FileSystems.rename, threading.Lock(), []
    def rename(src, dst):
        if not any("triples-" in d for d in dst):
            return original(src, dst)
        with lock:  # (rename threads run in parallel; the first one renames one shard, then all block)
            if not done:
                done.append(1)
                original(src[:1], dst[:1])
            Path(marker).touch()
            time.sleep(600)
    FileSystems.rename = staticmethod(rename)
from tripleminer.pipelines import mine
mine.main(argv)
'''


def run_and_kill(tmp_path: Path, mode: str, argv: List[str]) -> None:
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    marker = tmp_path / f"{mode}.reached"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(script), str(marker), mode, *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before reaching {mode}: {proc.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, f"never reached {mode}"
            time.sleep(0.1)
        time.sleep(0.2)  # let a concurrent rename thread reach its block too
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_while_writing_leaves_no_shard(inputs, clean_rows, tmp_path):
    out = tmp_path / "out"
    run_and_kill(tmp_path, "write", mine_args(inputs, out, "--num_shards", "3"))
    assert not list(out.glob("triples-*")), "a killed run left a file under a final shard name"
    assert not (out / "stats.json").exists()
    assert list(out.glob("beam-temp-*")), "the partial file should be in Beam's temporary folder"
    with pytest.raises(OutputExistsError):  # leftovers make the folder non-empty: refused without --overwrite
        mine.run(mine_args(inputs, out))
    mine.run(mine_args(inputs, out, "--overwrite"))
    assert canonical(read_rows(out)) == clean_rows
    assert not list(out.glob("beam-temp-*"))


@pytest.mark.slow
def test_kill_while_finalizing_leaves_only_whole_shards(inputs, clean_rows, tmp_path):
    out = tmp_path / "out"
    run_and_kill(tmp_path, "finalize", mine_args(inputs, out, "--num_shards", "3"))
    final = sorted(out.glob("triples-*.parquet"))
    assert len(final) == 1  # one shard renamed before the kill
    table = pq.read_table(final[0])  # whole and readable (footer and all), not partial
    assert table.schema.remove_metadata().equals(NESTED_SCHEMA)
    assert set(canonical(table.to_pylist())) <= set(clean_rows)
    assert len(list(out.glob("beam-temp-*/*"))) >= 1  # the other shards never left the temporary folder
    assert not (out / "stats.json").exists()  # the marker of a complete run is missing


# --------------------------------------------------------------------------------------------
# Reruns into an existing output
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_output(inputs) -> Path:
    out = inputs / "first"
    mine.run(mine_args(inputs, out, "--num_shards", "3"))
    return out


@pytest.fixture()
def old_output(first_output, tmp_path):
    """A copy of a finished 3-shard run's folder, and its files' bytes."""
    out = tmp_path / "out"
    shutil.copytree(first_output, out)
    return out, snapshot(out)


@pytest.mark.slow
@pytest.mark.parametrize("case,extra,error", [
    ("bad negative mix", ["--negatives", "bm25:2,nonsense:1"], ValueError),
    ("impression without log", ["--negatives", "impression:1"], ValueError),
    ("missing input", ["--queries", "/nonexistent/queries-*.jsonl"], InputError),
    ("empty input", ["--corpus", "EMPTY"], InputError),
])
def test_refused_run_with_overwrite_keeps_the_old_output(inputs, old_output, tmp_path, case, extra, error):
    out, before = old_output
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    extra = [str(empty) if e == "EMPTY" else e for e in extra]
    with pytest.raises(error):
        mine.run(mine_args(inputs, out, "--overwrite", *extra))
    assert snapshot(out) == before


@pytest.mark.slow
def test_rerun_without_overwrite_is_refused_and_with_it_replaces_everything(inputs, old_output, clean_rows):
    out, before = old_output
    with pytest.raises(OutputExistsError, match=r"--output .* is not empty \(5 files\); pass --overwrite"):
        mine.run(mine_args(inputs, out))
    assert snapshot(out) == before
    mine.run(mine_args(inputs, out, "--overwrite", "--num_shards", "1"))
    assert sorted(f.name for f in out.iterdir()) == ["dead_letter-00000-of-00001.jsonl", "stats.json", "triples-00000-of-00001.parquet"]
    assert canonical(read_rows(out)) == clean_rows


def test_clearing_removes_stats_json_first_and_stats_are_written_whole(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("triples-00000-of-00001.parquet", "dead_letter-00000-of-00001.jsonl", "stats.json"):
        (out / name).write_text("old")
    calls = []
    original_delete = FileSystems.delete
    monkeypatch.setattr(FileSystems, "delete", staticmethod(lambda paths: (calls.append(sorted(Path(p).name for p in paths)), original_delete(paths))))
    writers.prepare_output(str(out), overwrite=True)
    assert calls[0] == ["stats.json"] and sorted(calls[1]) == ["dead_letter-00000-of-00001.jsonl", "triples-00000-of-00001.parquet"]
    assert not list(out.iterdir())

    def failing_rename(src, dst):
        raise OSError("disk full (test)")

    monkeypatch.setattr(FileSystems, "rename", staticmethod(failing_rename))
    with pytest.raises(OSError, match="disk full"):
        writers.write_stats(str(out), {"rows": 1})
    assert not (out / "stats.json").exists()  # never a partial stats.json under its final name
    monkeypatch.undo()
    writers.write_stats(str(out), {"rows": 1})
    assert json.loads((out / "stats.json").read_text()) == {"rows": 1}
    assert [f.name for f in out.iterdir()] == ["stats.json"]
