"""The mine pipeline is portable: submitted through Beam's portable Job API to a local job service
(the path Flink's and Spark's job servers take) it writes the same rows as the in-memory
DirectRunner."""

import socket
import subprocess
import sys
import time

import pytest

from conftest import canonical, read_rows
from tripleminer.pipelines import mine

pytestmark = pytest.mark.slow  # the whole mine pipeline on SciFact, twice


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_endpoint():
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                break
        time.sleep(0.3)
    else:
        service.kill()
        pytest.fail("local job service did not start")
    yield f"localhost:{port}"
    service.terminate()
    service.wait(timeout=30)


def test_portable_runner_writes_the_same_rows(scifact, tmp_path, job_endpoint):
    base = [
        "--corpus", str(scifact / "corpus.jsonl"), "--queries", str(scifact / "queries.jsonl"),
        "--qrels", str(scifact / "qrels" / "train.tsv"), "--query_log", str(scifact / "query_log.train.jsonl"),
        "--negatives", "impression:1,bm25:2@1-50,gold:1,random:1", "--work_dir", str(tmp_path / "work"),
    ]
    local = mine.run(base + ["--output", str(tmp_path / "local")])
    portable = mine.run(base + ["--output", str(tmp_path / "portable"), "--runner", "PortableRunner",
                                "--job_endpoint", job_endpoint, "--environment_type", "LOOPBACK"])
    assert canonical(read_rows(tmp_path / "portable")) == canonical(read_rows(tmp_path / "local"))
    assert portable["rows"] == local["rows"] > 900
    assert portable["negatives_per_source"] == local["negatives_per_source"]  # metrics come back too
