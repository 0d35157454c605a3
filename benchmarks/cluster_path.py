"""The cluster path end to end: `tripleminer mine` (bm25 + ann) submitted to Beam's job service with
`--environment_type EXTERNAL`, run by 2 SDK worker processes of a separate worker pool (own working
directory, TMPDIR and HOME, no AWS variables), every path on `s3://` of a local S3-compatible server
(moto, 127.0.0.1, random port), compared with the in-memory DirectRunner on local paths; then a run
SIGKILLed while it embeds the corpus, resumed with the same options.

    python benchmarks/cluster_path.py [--queries 16] [--docs 96] [--keep DIR] [--no-kill] [--breakdown]
    make cluster-check

prints the checks, the wall times and their ratio, and a table of the object store's traffic per key
prefix (a stage's folder), counted by the S3 server itself: bytes of the request bodies that wrote
objects (PUT, upload parts) and of the response bodies that read them (GET), requests per operation.
Exits 1 when the rows differ or the resumed run reused nothing. The killed run uses the DirectRunner
(killing the submitter of a portable job does not stop the job in the job service), with every path on S3.

Two pieces stand in for a cluster's own:
- `boot` plays the SDK container's boot program (`/opt/apache/beam/boot`, which the Python SDK image
  runs under `worker_pool_main --container_executable`): it fetches the job's provision info (the
  pipeline options) and starts `sdk_worker_main` with them. A bare `worker_pool_main` starts its workers
  without the pipeline options, so no S3 (or GCS) option reaches them and Beam's S3 filesystem fails
  ("Must provide one of client or options"); a worker image is already installed, so `boot` skips the
  artifact staging.
- `job-service` is Beam's local job service (`local_job_service_main`) whose FnApiRunner honours
  `--sdk_worker_parallelism` (the option Flink's and Spark's job servers read): stock, it runs every
  stage on one SDK worker.
Both are subcommands of this file, with `s3-server` (moto's server app behind a byte counter).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent
BUCKET = "bucket"
REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "cluster-check-key", "cluster-check-secret"  # moto accepts any
MIX = "bm25:2@1-30,ann:2@1-30,random:1"
MINE_OPTIONS = ["--negatives", MIX, "--bm25_shards", "2", "--ann_shards", "2", "--max_seq_length", "64", "--seed", "7",
                "--embed_min_batch_size", "32", "--embed_max_batch_size", "32", "--num_shards", "2", "--precision", "fp32"]
# Batches of 32 texts: the embedding cache commits a file per 32 vectors (what a killed run keeps). fp32: with
# bf16 the vectors depend on the batch a text is padded in (scores differ by ~1e-3 between runs), in fp32 by ~1e-6.
SCORE_TOLERANCE = 1e-4
BAD_CORPUS_LINE = '{"_id": "broken", "title": "not json\n'  # one dead letter, so dead letters go through the bucket too


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def stop(proc: Optional[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM the process group started with `proc` (it and its children), SIGKILL what is left."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # children (SDK workers) that outlived their parent
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break


def start(cmd: Sequence[str], cwd: Path, env: Dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(list(cmd), cwd=str(cwd), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def base_env(home: Path) -> Dict[str, str]:
    """A process's environment: own HOME and TMPDIR, the venv's bin first on PATH, no AWS_* variables
    (credentials and endpoint reach Beam's S3 filesystem through the pipeline options only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOTO"))}
    (home / "home").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home / "home"), TMPDIR=str(home / "tmp"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    env.pop("PYTHONPATH", None)  # the installed package, not the repo checkout beside the cwd
    return env


# --------------------------------------------------------------------------------------------
# The object store: moto's S3 server, counting the bytes of every request body
# --------------------------------------------------------------------------------------------


def stage_of(key: str) -> str:
    """A key's folder as a stage: `<run>/inputs/...` -> inputs, `<run>/work/indices/bm25-<h>/...` ->
    work/indices/bm25, `<run>/out/triples-00000-of-00002.parquet` -> out/triples, Beam's temporary
    folders as `.../beam-temp`."""
    parts = key.split("/")[1:]
    if not parts or not parts[0]:
        return "(multi-object delete)" if not key else "(bucket)"
    temp = any(p.startswith("beam-temp") for p in parts)
    if parts[0] == "work" and len(parts) > 1:
        if parts[1] == "indices" and len(parts) > 2:
            name = "work/indices/" + parts[2].split("-")[0]
        else:
            name = "work/" + parts[1]
    elif parts[0] == "out" and len(parts) > 1:
        leaf = parts[1]
        if temp:
            return "out/beam-temp"
        name = "out/" + ("report" if leaf == "report" else re.split(r"[-.]", leaf.lstrip("."))[0] or leaf)
        return name + (" (tmp name)" if leaf.startswith(".") else "")
    else:
        name = parts[0]
    if parts[-1].startswith(".tmp-"):
        return name + " (tmp name)"
    return name + (" beam-temp" if temp else "")


class CountingApp:
    """WSGI middleware in front of moto: per (stage, operation) the requests, the bytes of request
    bodies that wrote objects (PUT, upload parts) and of response bodies that read them (GET). Server-side
    copies (S3 has no rename: Beam renames by copy + delete) count as requests without bytes.
    GET /_traffic returns the counts; DELETE /_traffic resets them."""

    def __init__(self, app: Any) -> None:
        self.app, self.lock = app, threading.Lock()
        self.counts: Dict[Tuple[str, str], List[int]] = defaultdict(lambda: [0, 0, 0])

    @staticmethod
    def operation(environ: Dict[str, Any]) -> Tuple[str, str]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        bucket, _, key = path.lstrip("/").partition("/")
        if not key:
            prefix = re.search(r"(?:^|&)prefix=([^&]*)", query)
            key = unquote(prefix.group(1)) if prefix else ""
            return ("list" if method == "GET" else "delete" if "delete" in query else method.lower()), key
        if method == "GET":
            return "read", key
        if method == "HEAD":
            return "head", key
        if method == "PUT":
            return ("copy" if environ.get("HTTP_X_AMZ_COPY_SOURCE") else "write"), key
        if method == "DELETE":
            return "delete", key
        return "multipart", key  # POST: start or complete a multipart upload

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/_traffic":
            with self.lock:
                if environ["REQUEST_METHOD"] == "DELETE":
                    self.counts.clear()
                body = json.dumps([[s, op, *v] for (s, op), v in sorted(self.counts.items())]).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        op, key = self.operation(environ)
        written = 0
        if op == "write":
            written = int(environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH") or 0)
        result = self.app(environ, start_response)

        def counted() -> Iterator[bytes]:
            read = 0
            try:
                for chunk in result:
                    read += len(chunk)
                    yield chunk
            finally:
                if hasattr(result, "close"):
                    result.close()
                with self.lock:
                    c = self.counts[(stage_of(key), op)]
                    c[0] += 1
                    c[1] += written
                    c[2] += read if op == "read" else 0

        return counted()


def serve_s3(port: int) -> None:
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    run_simple("127.0.0.1", port, CountingApp(DomainDispatcherApplication(create_backend_app)), threaded=True)


# --------------------------------------------------------------------------------------------
# The SDK container contract (`boot`) and the job service with worker parallelism
# --------------------------------------------------------------------------------------------


def boot(argv: Sequence[str]) -> None:
    """What the SDK image's boot does for `worker_pool_main --container_executable`, minus artifact
    staging: get the job's pipeline options from the provision service, start sdk_worker_main."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
    from google.protobuf import json_format, text_format

    parser = argparse.ArgumentParser(prog="boot")
    for name in ("id", "logging_endpoint", "artifact_endpoint", "provision_endpoint", "control_endpoint"):
        parser.add_argument(f"--{name}", required=name in ("id", "provision_endpoint", "control_endpoint"))
    a, _ = parser.parse_known_args(argv)
    with grpc.insecure_channel(a.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", a.id)]).info
    descriptor = lambda url: text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))  # noqa: E731
    env = dict(os.environ, WORKER_ID=a.id, PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
               CONTROL_API_SERVICE_DESCRIPTOR=descriptor(a.control_endpoint),
               RUNNER_CAPABILITIES=" ".join(info.runner_capabilities))
    if a.logging_endpoint or info.logging_endpoint.url:
        env["LOGGING_API_SERVICE_DESCRIPTOR"] = descriptor(a.logging_endpoint or info.logging_endpoint.url)
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = descriptor(info.status_endpoint.url)
    workers = Path.cwd() / "workers"  # a record for the checks: which process ran, where
    workers.mkdir(exist_ok=True)
    (workers / f"{a.id}.json").write_text(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "tmpdir": tempfile.gettempdir(),
                                                       "home": os.environ.get("HOME")}))
    os.dup2(2, 1)  # the pool pipes stdout and never reads it
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


def job_service(argv: Sequence[str]) -> None:
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability import local_job_service, local_job_service_main
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    def invoke_runner(job: Any) -> Any:
        job.set_state(beam_job_api_pb2.JobState.RUNNING)
        options = job.pipeline_options()
        runner = fn_runner.FnApiRunner(provision_info=job._provision_info)
        runner._num_workers = max(1, int(options.view_as(PortableOptions).sdk_worker_parallelism or 1))  # a string via the Job API
        return runner.run_via_runner_api(job._pipeline_proto, options)

    local_job_service.BeamJob._invoke_runner = invoke_runner
    local_job_service_main.run(list(argv))


# --------------------------------------------------------------------------------------------
# The harness: object store, worker pool, job service
# --------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    root: Path
    procs: Dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: Dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def s3_options(self) -> List[str]:
        return ["--s3_endpoint_url", self.endpoint, "--s3_access_key_id", ACCESS_KEY,
                "--s3_secret_access_key", SECRET_KEY, "--s3_region_name", REGION]

    def portable_options(self, workers: int = 2) -> List[str]:
        return ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{self.ports['job']}",
                "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{self.ports['pool']}",
                "--sdk_worker_parallelism", str(workers)]

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start_s3(self) -> None:
        port = self.ports["s3"] = free_port()
        d = self.dir("s3")
        self.procs["s3"] = start([sys.executable, str(Path(__file__).resolve()), "s3-server", "--port", str(port)],
                                 d, base_env(d), d / "server.log")
        wait_for_port(port, self.procs["s3"], "the S3 server")
        self.client().create_bucket(Bucket=BUCKET)

    def start_workers(self) -> None:
        """`worker_pool_main` in its own folder, HOME and TMPDIR, with `boot` as container executable."""
        port = self.ports["pool"] = free_port()
        d = self.dir("pool")
        executable = d / "boot"
        executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" boot "$@"\n')
        executable.chmod(0o755)
        env = dict(base_env(d), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # a core per SDK worker, like a task slot
        self.procs["pool"] = start([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                    f"--service_port={port}", f"--container_executable={executable}"],
                                   d, env, d / "pool.log")
        wait_for_port(port, self.procs["pool"], "the SDK worker pool")

    def start_job_service(self) -> None:
        port = self.ports["job"] = free_port()
        d = self.dir("job")
        self.procs["job"] = start([sys.executable, str(Path(__file__).resolve()), "job-service", "--port", str(port)],
                                  d, base_env(d), d / "job.log")
        wait_for_port(port, self.procs["job"], "the job service")

    def close(self) -> None:
        for name in ("job", "pool", "s3"):
            stop(self.procs.pop(name, None))

    def worker_records(self) -> List[Dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "pool" / "workers").glob("*.json"))]

    # --- the bucket -----------------------------------------------------------------------

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                               aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def upload(self, local_dir: Path, prefix: str) -> str:
        client = self.client()
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local_dir).as_posix()}")
        return f"s3://{BUCKET}/{prefix}"

    def objects(self, prefix: str) -> Dict[str, int]:
        """key -> size of every object under `prefix`."""
        out, token = {}, None
        client = self.client()
        while True:
            page = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def download(self, prefix: str, local_dir: Path) -> Path:
        client = self.client()
        for key in self.objects(prefix):
            target = local_dir / key[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, key, str(target))
        return local_dir

    def traffic(self, reset: bool = False) -> List[List[Any]]:
        """[stage, operation, requests, bytes written, bytes read] since the last reset."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint}/_traffic", method="DELETE" if reset else "GET")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    """A running object store, SDK worker pool and job service, all stopped on exit whatever happens."""
    c = Cluster(root)
    try:
        c.start_s3()
        c.start_workers()
        c.start_job_service()
        yield c
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# Data and runs
# --------------------------------------------------------------------------------------------


def make_slice(scifact: Path, out: Path, n_queries: int = 16, n_docs: int = 96) -> Dict[str, int]:
    """The first `n_queries` train queries, their judged documents plus others up to `n_docs`, and one
    malformed corpus line (a dead letter)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = (scifact / "qrels" / "train.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    wanted_q = list(dict.fromkeys(r.split("\t")[0] for r in rows))[:n_queries]
    qrels = [r for r in rows if r.split("\t")[0] in set(wanted_q)]
    judged = {r.split("\t")[1] for r in qrels}
    docs = [line for line in (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [json.loads(d)["_id"] for d in docs]
    chosen = [d for d, i in zip(docs, ids) if i in judged]
    chosen += [d for d, i in zip(docs, ids) if i not in judged][: max(0, n_docs - len(chosen))]
    (out / "corpus.jsonl").write_text("\n".join(chosen[:5] + [BAD_CORPUS_LINE.rstrip("\n")] + chosen[5:]) + "\n", encoding="utf-8")
    queries = [q for q in (scifact / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if q.strip() and json.loads(q)["_id"] in set(wanted_q)]
    (out / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (out / "qrels.tsv").write_text("\n".join([header] + qrels) + "\n", encoding="utf-8")
    return {"docs": len(chosen), "queries": len(queries), "qrels": len(qrels)}


def mine_args(inputs: str, work_dir: str, output: str, *extra: str) -> List[str]:
    sep = "/" if "://" in inputs else os.sep
    return ["--corpus", inputs + sep + "corpus.jsonl", "--queries", inputs + sep + "queries.jsonl",
            "--qrels", inputs + sep + "qrels.tsv", "--work_dir", work_dir, "--output", output, *MINE_OPTIONS, *extra]


def run_mine(args: Sequence[str], cwd: Path, timeout: float = 600) -> float:
    """`tripleminer mine ARGS` as its own process in `cwd` (own HOME and TMPDIR); its wall time."""
    log = cwd / "mine.log"
    start_t = time.perf_counter()
    proc = start([sys.executable, "-m", "tripleminer.cli", "mine", *args], cwd, base_env(cwd), log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop(proc, grace=2)
    if code != 0:
        raise RuntimeError(f"tripleminer mine exited {code}:\n{log.read_text(errors='replace')[-6000:]}")
    return time.perf_counter() - start_t


def read_rows(folder: Path) -> List[Dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted(folder.glob("triples-*.parquet"))
    if not files:
        raise AssertionError(f"no shards in {folder}")
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def row_differences(rows: List[Dict[str, Any]], expected: List[Dict[str, Any]], tolerance: float = SCORE_TOLERANCE) -> List[str]:
    """What differs between two outputs, whatever their shard and row order: every id, rank, text and
    label exactly, every float (dense scores) within `tolerance`: vectors computed in other processes
    and batches differ in the last bits."""
    def key(r: Dict[str, Any]) -> str:
        return json.dumps([r["query_id"], r["positive"]["doc_id"]])

    def walk(a: Any, b: Any, where: str, out: List[str]) -> None:
        if isinstance(a, float) and isinstance(b, float):
            if abs(a - b) > tolerance:
                out.append(f"{where}: {a} != {b}")
        elif isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                out.append(f"{where}: fields {sorted(a)} != {sorted(b)}")
            for k in a.keys() & b.keys():
                walk(a[k], b[k], f"{where}.{k}", out)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append(f"{where}: {len(a)} items != {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]", out)
        elif a != b:
            out.append(f"{where}: {a!r} != {b!r}")

    mine_, theirs = {key(r): r for r in rows}, {key(r): r for r in expected}
    out = [f"row count {len(rows)} != {len(expected)}"] if len(rows) != len(expected) else []
    out += [f"only in the first: {k}" for k in mine_.keys() - theirs.keys()] + [f"only in the second: {k}" for k in theirs.keys() - mine_.keys()]
    for k in sorted(mine_.keys() & theirs.keys()):
        walk(mine_[k], theirs[k], k, out)
    return out


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


def direct_run(slice_dir: Path, root: Path, in_process: bool = False) -> Dict[str, Any]:
    """The in-memory DirectRunner on local paths: the reference."""
    root.mkdir(parents=True, exist_ok=True)
    args = mine_args(str(slice_dir), str(root / "work"), str(root / "out"))
    if in_process:
        from tripleminer.pipelines import mine

        start_t = time.perf_counter()
        mine.run(args)
        wall = time.perf_counter() - start_t
    else:
        wall = run_mine(args, root)
    return {"wall_s": wall, "out": root / "out", "stats": json.loads((root / "out" / "stats.json").read_text())}


def external_run(c: Cluster, slice_dir: Path, prefix: str = "cluster") -> Dict[str, Any]:
    """Upload the slice, run `tripleminer mine` on the EXTERNAL workers with every path on S3, count the
    traffic of the run alone, list and download what it left."""
    inputs = c.upload(slice_dir, f"{prefix}/inputs")
    base = f"s3://{BUCKET}/{prefix}"
    args = mine_args(inputs, f"{base}/work", f"{base}/out", *c.s3_options(), *c.portable_options())
    c.traffic(reset=True)
    wall = run_mine(args, c.dir("submit"))
    traffic = c.traffic()
    out = c.download(f"{prefix}/out", c.dir("downloaded") / "out")
    return {"wall_s": wall, "args": args, "traffic": traffic, "objects": c.objects(f"{prefix}/"), "out": out,
            "stats": json.loads((out / "stats.json").read_text()), "prefix": prefix}


def report_through_bucket(c: Cluster, downloaded: Path, prefix: str) -> List[str]:
    """`tripleminer report` reads a local folder (report.py globs and opens local files): render it from
    the run downloaded from the bucket, upload it beside the run, return its keys."""
    from tripleminer.report import write_report

    write_report(str(downloaded))
    c.upload(downloaded / "report", f"{prefix}/out/report")
    return sorted(c.objects(f"{prefix}/out/report/"))


def kill_while_embedding(c: Cluster, args: Sequence[str], cache_prefix: str, cwd: Path, timeout: float = 300) -> Dict[str, Any]:
    """Start `tripleminer mine ARGS`, SIGKILL it (its process group) as soon as the first corpus
    embedding file is committed under `cache_prefix`, i.e. partway through embedding the corpus."""
    log = cwd / "killed.log"
    proc = start([sys.executable, "-m", "tripleminer.cli", "mine", *args], cwd, base_env(cwd), log)
    seen: Dict[str, int] = {}
    try:
        deadline = time.monotonic() + timeout
        while not seen:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended (exit {proc.returncode}) before it was killed:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("no corpus embedding was committed in time")
            time.sleep(0.1)
            seen = {k: n for k, n in c.objects(cache_prefix).items() if re.search(r"/doc-[0-9a-f]+\.parquet$", k)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return {"returncode": proc.returncode, "seen": seen, "log": log}


def kill_and_resume(c: Cluster, inputs: str, prefix: str = "resume", in_process: bool = False) -> Dict[str, Any]:
    """A run (DirectRunner, every path on S3) SIGKILLed partway through embedding the corpus, then the
    same command again. Returns what the kill left and the resumed run's stats and rows."""
    import pyarrow.parquet as pq

    base = f"s3://{BUCKET}/{prefix}"
    args = mine_args(inputs, f"{base}/work", f"{base}/out", *c.s3_options())
    killed = kill_while_embedding(c, args, f"{prefix}/work/embeddings/", c.dir("killed"))
    left = c.objects(f"{prefix}/")
    committed = {}  # every cache file under a final name, read whole (a partial Parquet file has no footer)
    scratch = c.dir("left-after-kill")
    for key in left:
        if re.search(r"/(doc|query)-[0-9a-f]+\.parquet$", key):
            local = scratch / key.rsplit("/", 1)[-1]
            c.client().download_file(BUCKET, key, str(local))
            committed[key] = pq.read_table(local).num_rows
    start_t = time.perf_counter()
    if in_process:
        from tripleminer.pipelines import mine

        mine.run(args)  # the same command line: no --overwrite
    else:
        run_mine(args, c.dir("resumed"))
    wall = time.perf_counter() - start_t
    out = c.download(f"{prefix}/out", c.dir("resumed-out"))
    return {"killed": killed, "left": left, "committed": committed, "wall_s": wall, "out": out, "args": args,
            "stats": json.loads((out / "stats.json").read_text()), "objects": c.objects(f"{prefix}/")}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def traffic_table(traffic: List[List[Any]], objects: Dict[str, int]) -> List[str]:
    by_stage: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for stage, op, requests, written, read in traffic:
        s = by_stage[stage]
        s[op] += requests
        s["bytes written"] += written
        s["bytes read"] += read
    stored: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
    for key, size in objects.items():
        stored[stage_of(key)][0] += 1
        stored[stage_of(key)][1] += size
    ops = ["read", "write", "multipart", "head", "list", "copy", "delete"]
    lines = [f"{'prefix (stage)':<30}{'KB written':>11}{'KB read':>10}{'objects':>9}{'KB stored':>11}  requests",
             "-" * 110]
    for stage in sorted(set(by_stage) | set(stored)):
        s = by_stage.get(stage, {})
        reqs = ", ".join(f"{op} {s[op]}" for op in ops if s.get(op))
        lines.append(f"{stage:<30}{s.get('bytes written', 0) / 1024:>11.1f}{s.get('bytes read', 0) / 1024:>10.1f}"
                     f"{stored[stage][0]:>9}{stored[stage][1] / 1024:>11.1f}  {reqs}")
    lines.append(f"{'total':<30}{sum(t[3] for t in traffic) / 1024:>11.1f}{sum(t[4] for t in traffic) / 1024:>10.1f}"
                 f"{len(objects):>9}{sum(objects.values()) / 1024:>11.1f}  {sum(t[2] for t in traffic)} requests")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("s3-server", "boot", "job-service"):
        {"s3-server": lambda a: serve_s3(int(a[a.index("--port") + 1])), "boot": boot, "job-service": job_service}[argv[0]](argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--docs", type=int, default=96)
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--keep", default=None, help="Keep the logs and folders here (default: a temporary folder, removed).")
    parser.add_argument("--no-kill", action="store_true", help="Skip the killed-and-resumed run.")
    parser.add_argument("--breakdown", action="store_true",
                        help="Also run DirectRunner with every path on S3, and EXTERNAL workers on local paths: which part of the ratio is which.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cluster-path-"))
    ok = True
    try:
        sizes = make_slice(Path(args.data) / "scifact", root / "slice", args.queries, args.docs)
        print(f"slice: {sizes['queries']} queries, {sizes['docs']} documents (+1 malformed line), {sizes['qrels']} judged pairs; "
              f"negatives {MIX}, 2 BM25 + 2 FAISS shards, --max_seq_length 64, fp32")
        with cluster(root / "cluster") as c:
            ref = direct_run(root / "slice", root / "local")
            ext = external_run(c, root / "slice")
            diff = row_differences(read_rows(ext["out"]), read_rows(ref["out"]))
            ok &= not diff
            print(f"\nrows: EXTERNAL + S3 {ext['stats']['rows']}, in-memory DirectRunner {ref['stats']['rows']}; "
                  f"same rows (scores within {SCORE_TOLERANCE}): {not diff}" + "".join(f"\n  {d}" for d in diff[:10]))
            print(f"SDK workers that ran: {len(c.worker_records())} processes of the pool")
            print(f"wall time of the `tripleminer mine` process: in-memory {ref['wall_s']:.1f}s, EXTERNAL + S3 {ext['wall_s']:.1f}s, "
                  f"ratio {ext['wall_s'] / ref['wall_s']:.2f}x")
            print(f"pipeline wall time (stats.json wall_time_s): in-memory {ref['stats']['wall_time_s']:.1f}s, EXTERNAL + S3 "
                  f"{ext['stats']['wall_time_s']:.1f}s, ratio {ext['stats']['wall_time_s'] / ref['stats']['wall_time_s']:.2f}x")
            print("\nobject store traffic of the EXTERNAL + S3 run by key prefix, counted by the S3 server: bytes of the request "
                  "bodies that wrote objects and of the response bodies that read them; copy = a server-side rename; "
                  "stored = what is there after the run")
            print("\n".join(traffic_table(ext["traffic"], ext["objects"])))
            if args.breakdown:
                base = f"s3://{BUCKET}/direct-s3"
                s3_only = run_mine(mine_args(f"s3://{BUCKET}/{ext['prefix']}/inputs", f"{base}/work", f"{base}/out", *c.s3_options()),
                                   c.dir("direct-s3"))
                s3_stats = json.loads(c.client().get_object(Bucket=BUCKET, Key="direct-s3/out/stats.json")["Body"].read())
                local = c.dir("external-local")
                workers_only = run_mine(mine_args(str(root / "slice"), str(local / "work"), str(local / "out"), *c.portable_options()),
                                        c.dir("external-local-submit"))
                w_stats = json.loads((local / "out" / "stats.json").read_text())
                print(f"breakdown (pipeline wall time): DirectRunner + S3 {s3_stats['wall_time_s']:.1f}s "
                      f"({s3_stats['wall_time_s'] / ref['stats']['wall_time_s']:.2f}x; process {s3_only:.1f}s), "
                      f"EXTERNAL workers + local paths {w_stats['wall_time_s']:.1f}s "
                      f"({w_stats['wall_time_s'] / ref['stats']['wall_time_s']:.2f}x; process {workers_only:.1f}s)")
            report = report_through_bucket(c, ext["out"], ext["prefix"])
            print(f"\nreport rendered from the downloaded run and uploaded: {len(report)} objects under {ext['prefix']}/out/report/")
            if not args.no_kill:
                k = kill_and_resume(c, f"s3://{BUCKET}/{ext['prefix']}/inputs")
                embed = k["stats"]["counters"].get("embed", {})
                docs_at_kill = sum(n for key, n in k["committed"].items() if "/doc-" in key)
                resumed_diff = row_differences(read_rows(k["out"]), read_rows(ref["out"]))
                ok &= not resumed_diff and embed.get("doc_cache_hits", 0) > 0
                print(f"\nkilled run (DirectRunner, every path on S3): SIGKILLed with {docs_at_kill} of {sizes['docs']} corpus vectors "
                      f"committed in {sum('/doc-' in key for key in k['committed'])} cache files; "
                      f"{sum(key.startswith('resume/out/') for key in k['left'])} objects under resume/out/")
                print(f"resumed with the same command ({k['wall_s']:.1f}s): doc cache hits {embed.get('doc_cache_hits', 0)}, "
                      f"doc texts embedded {embed.get('doc_texts_embedded', 0)}, query cache hits {embed.get('query_cache_hits', 0)}, "
                      f"query texts embedded {embed.get('query_texts_embedded', 0)}; same rows as the uninterrupted run: {not resumed_diff}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
