"""The cluster path end to end (benchmarks/cluster_path.py holds the harness; `make cluster-check` prints its table).

`tripleminer mine` with bm25 and ann negatives, submitted to Beam's job service with
`--environment_type EXTERNAL` and run by 2 SDK worker processes of a separate worker pool (own
working directory, TMPDIR and HOME, no AWS variables: the S3 options reach them with the job), every
path on `s3://` of a local moto server: the rows equal the in-memory DirectRunner's on local paths,
index shards, embedding caches, dead letters, stats and the report go through the bucket. Then a
run SIGKILLed while it embeds the corpus resumes from what its cache committed.

Not proven here: a real Flink or Spark cluster (their job servers are Java; the local job service
runs the same portable pipeline proto), several machines (the workers share this one's CPU and
loopback), Beam's artifact staging (the workers have the package installed, as a worker image does),
S3 consistency or latency of a real object store.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from tripleminer.index import bm25, dense

sys.path.insert(0, str(REPO / "benchmarks"))
import cluster_path as cp  # noqa: E402

pytestmark = pytest.mark.slow  # the real MiniLM on a SciFact slice, on separate worker processes
pytest.importorskip("moto.server", reason="needs moto[server] (requirements-dev.txt)")
pytest.importorskip("boto3", reason="needs apache-beam[aws] (requirements-dev.txt)")

N_QUERIES, N_DOCS = 16, 96


@pytest.fixture(scope="module")
def slice_dir(scifact, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cluster-slice")
    sizes = cp.make_slice(scifact, d, N_QUERIES, N_DOCS)
    assert sizes["queries"] == N_QUERIES and sizes["docs"] == N_DOCS
    return d


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with cp.cluster(tmp_path_factory.mktemp("cluster")) as c:  # every process stopped, also on failure
        yield c


@pytest.fixture(scope="module")
def reference(slice_dir, tmp_path_factory):
    return cp.direct_run(slice_dir, tmp_path_factory.mktemp("in-memory"), in_process=True)


@pytest.fixture(scope="module")
def external(cluster, slice_dir, reference):
    return cp.external_run(cluster, slice_dir)


def test_external_workers_with_every_path_on_s3_write_the_same_rows(external, reference, cluster):
    assert cp.row_differences(cp.read_rows(external["out"]), cp.read_rows(reference["out"])) == []
    ext, ref = external["stats"], reference["stats"]
    assert ext["rows"] == ref["rows"] >= N_QUERIES
    assert ext["negatives_per_source"] == ref["negatives_per_source"] and set(ext["negatives_per_source"]) == {"bm25", "ann", "random"}
    assert ext["dead_letters"] == ref["dead_letters"] and sum(ext["dead_letters"].values()) == 1  # the malformed line

    # No local path on the command line: every path is s3://, the rest are options and endpoints.
    values = [a for a in external["args"] if not a.startswith("--")]
    assert [v for v in values if "/" in v and not v.startswith(("s3://", "http://127.0.0.1:"))] == []
    assert sum(v.startswith("s3://") for v in values) == 5  # corpus, queries, qrels, work_dir, output

    # Two SDK worker processes of the pool ran the bundles, in the pool's folder, TMPDIR and HOME.
    pool = cluster.root / "pool"
    workers = cluster.worker_records()
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert all(w["cwd"] == str(pool) and w["tmpdir"] == str(pool / "tmp") and w["home"] == str(pool / "home") for w in workers)
    # ... built the index shards there and copied them from the bucket to search them: 4 shards, each loaded
    # at most once per process, so more than 4 copies means both processes searched. None in the submitter's TMPDIR.
    scratch = [p.name.rsplit("-", 1)[0] for p in (pool / "tmp").iterdir()]
    assert scratch.count("tripleminer-bm25") == scratch.count("tripleminer-ann") == 2
    assert 4 < scratch.count("tripleminer-index") <= 8
    assert not [p for p in (cluster.root / "submit" / "tmp").iterdir() if p.name.startswith("tripleminer-")]
    assert cp.SECRET_KEY not in (external["out"] / "stats.json").read_text()  # credentials are not recorded
    print(f"pipeline wall time: in-memory {ref['wall_time_s']}s, EXTERNAL + S3 {ext['wall_time_s']}s, "
          f"ratio {ext['wall_time_s'] / ref['wall_time_s']:.2f}x")


def test_indices_caches_dead_letters_stats_and_report_round_trip_through_the_bucket(external, cluster):
    keys = sorted(external["objects"])
    prefix = external["prefix"] + "/"
    rel = [k[len(prefix):] for k in keys]
    for kind, marker in (("bm25", bm25.SETTINGS_FILE), ("ann", dense.SETTINGS_FILE)):
        shards = {m.group(1) for k in rel if (m := re.match(rf"work/indices/{kind}-[0-9a-f]+/shard-(\d+)-[0-9a-f]+/", k))}
        assert shards == {"0", "1"}, (kind, rel)
        assert sum(k.endswith("/" + marker) for k in rel if k.startswith(f"work/indices/{kind}-")) == 2  # each shard whole
    cache = {"doc": 0, "query": 0}
    for key in keys:
        m = re.search(r"/work/embeddings/[^/]+/(doc|query)-[0-9a-f]+\.parquet$", key)
        if m:
            local = cluster.dir("cache-check") / key.rsplit("/", 1)[-1]
            cluster.client().download_file(cp.BUCKET, key, str(local))
            cache[m.group(1)] += pq.read_table(local).num_rows
    assert cache == {"doc": N_DOCS, "query": N_QUERIES}  # every vector went through the bucket, once
    out = sorted(k[len(prefix + "out/"):] for k in keys if k.startswith(prefix + "out/"))
    assert out == ["dead_letter-00000-of-00001.jsonl", "stats.json", "triples-00000-of-00002.parquet",
                   "triples-00001-of-00002.parquet"]  # no beam-temp folder, no temporary stats name left
    assert not [k for k in rel if "/.tmp-" in k or "beam-temp" in k]
    dead = [json.loads(line) for line in (external["out"] / "dead_letter-00000-of-00001.jsonl").read_text().splitlines()]
    assert [(d["input"], d["file"]) for d in dead] == [("corpus", f"s3://{cp.BUCKET}/{prefix}inputs/corpus.jsonl")]
    report = cp.report_through_bucket(cluster, external["out"], external["prefix"])
    assert f"{prefix}out/report/index.html" in report and any(k.endswith(".png") for k in report)

    # What the run moved, counted by the server: inputs read whole, vectors and shards written, shards
    # read back by the workers that search them.
    t = {}
    for stage, op, requests, written, read in external["traffic"]:
        w, r = t.get(stage, (0, 0))
        t[stage] = (w + written, r + read)
    inputs = sum(size for k, size in external["objects"].items() if k.startswith(prefix + "inputs/"))
    assert t["inputs"][1] >= inputs
    assert t["work/embeddings (tmp name)"][0] == sum(size for k, size in external["objects"].items() if "/work/embeddings/" in k)
    for kind in ("bm25", "ann"):
        stored = sum(size for k, size in external["objects"].items() if f"/work/indices/{kind}-" in k)
        assert t[f"work/indices/{kind}"][0] == stored and t[f"work/indices/{kind}"][1] >= stored
    print("\n".join(cp.traffic_table(external["traffic"], external["objects"])))  # shown with -s


def test_a_run_killed_while_embedding_the_corpus_resumes_from_its_cache(cluster, slice_dir, reference, external):
    k = cp.kill_and_resume(cluster, f"s3://{cp.BUCKET}/{external['prefix']}/inputs", in_process=True)
    assert k["killed"]["returncode"] == -signal.SIGKILL
    at_kill = sum(n for key, n in k["committed"].items() if "/doc-" in key)  # each committed file read whole
    assert 0 < at_kill < N_DOCS, "not killed partway through the corpus"
    assert not [key for key in k["left"] if key.startswith("resume/out/")]  # nothing written under the output
    embed = k["stats"]["counters"]["embed"]
    assert embed["doc_cache_hits"] == at_kill and embed["doc_texts_embedded"] == N_DOCS - at_kill  # only the rest
    assert embed.get("query_cache_hits", 0) + embed["query_texts_embedded"] == N_QUERIES
    assert cp.row_differences(cp.read_rows(k["out"]), cp.read_rows(reference["out"])) == []
    out = sorted(key.rsplit("/", 1)[-1] for key in k["objects"] if key.startswith("resume/out/"))
    assert out == ["dead_letter-00000-of-00001.jsonl", "stats.json", "triples-00000-of-00002.parquet", "triples-00001-of-00002.parquet"]
