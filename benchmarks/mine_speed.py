"""Speed of the mine pipeline on SciFact: whole-mine wall time and triples/s, and BM25 queries/s of
the pipeline's BM25 stage next to raw bm25s (and rank-bm25) on the same queries in the same run.

    python benchmarks/mine_speed.py [--data ../shared/data] [--min_raw_seconds 10]

The BM25 query set is SciFact's queries repeated under new ids until raw bm25s needs at least
--min_raw_seconds, so fixed costs (pipeline start, index load) are amortised as in a real run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import bm25s
import Stemmer
from apache_beam.metrics import Metrics

from tripleminer.index import bm25
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.retrieval import BM25Negatives

DEPTH = 100


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def whole_mine(data: Path, tmp: Path, work: Path) -> dict:
    s = data / "scifact"
    argv = [
        "--corpus", str(s / "corpus.jsonl"), "--queries", str(s / "queries.jsonl"),
        "--qrels", str(s / "qrels" / "train.tsv"), "--query_log", str(s / "query_log.train.jsonl"),
        "--work_dir", str(work), "--overwrite",
    ]
    out = {}
    for label in ("first run (index built)", "rerun (index cached)"):
        start = time.perf_counter()
        stats = mine.run(argv + ["--output", str(tmp / "mine")])
        wall = time.perf_counter() - start
        triples = sum(stats["negatives_per_source"].values())
        out[label] = (wall, stats["rows"], triples)
    return out


def raw_bm25s(docs: list, queries: list) -> float:
    """bm25s used directly, as its README does: tokenize, index, retrieve top-100 in one call."""
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(bm25s.tokenize([passage_text(d) for d in docs], stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    start = time.perf_counter()
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    retriever.retrieve(tokens, k=DEPTH, show_progress=False)
    return time.perf_counter() - start


def pipeline_bm25(index_dir: str, query_file: Path, argv: list) -> float:
    """Read queries -> BM25 stage -> count, on Beam; returns the wall seconds."""

    def to_record(line: str) -> dict:
        q = json.loads(line)
        return {"query_id": q["_id"], "query": q["text"], "positives": [], "candidates": []}

    counted = Metrics.counter("bench", "queries_out")
    start = time.perf_counter()
    with beam.Pipeline(argv=argv) as p:
        index = p | "IndexDir" >> beam.Create([(0, index_dir)])
        (
            p
            | beam.io.ReadFromText(str(query_file))
            | beam.Map(to_record)
            | BM25Negatives(index, 1, DEPTH, batch_size=2048)
            | beam.Map(lambda kv: counted.inc())
        )
    wall = time.perf_counter() - start
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", "../shared/data"))
    parser.add_argument("--min_raw_seconds", type=float, default=10.0)
    parser.add_argument("--rank_bm25_queries", type=int, default=300)
    args = parser.parse_args()
    data = Path(args.data)
    docs = read_jsonl(data / "scifact" / "corpus.jsonl")
    for d in docs:
        d["doc_id"] = d.pop("_id")
    base_queries = read_jsonl(data / "scifact" / "queries.jsonl")
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, (wall, n_rows, triples) in whole_mine(data, tmp, tmp / "work").items():
            rows.append((f"whole mine, SciFact train, {label}", f"{wall:.1f} s", f"{n_rows} rows, {triples / wall:,.0f} triples/s"))

        # Size the query set so raw bm25s needs at least min_raw_seconds.
        probe = raw_bm25s(docs, [q["text"] for q in base_queries])
        repeats = max(1, int(args.min_raw_seconds / probe * 1.1) + 1)
        queries = [{"_id": f"{q['_id']}#{r}", "text": q["text"]} for r in range(repeats) for q in base_queries]
        texts = [q["text"] for q in queries]
        query_file = tmp / "queries.jsonl"
        query_file.write_text("".join(json.dumps(q) + "\n" for q in queries))
        n = len(queries)

        raw = raw_bm25s(docs, texts)
        rows.append((f"raw bm25s, {n:,} queries, top-{DEPTH}", f"{raw:.1f} s", f"{n / raw:,.0f} q/s"))
        for backend in bm25.BACKENDS:
            index_dir = str(tmp / f"index-{backend}")
            bm25.build([d["doc_id"] for d in docs], [passage_text(d) for d in docs], bm25.BM25Settings(backend=backend), index_dir)
            if backend == "bm25s":
                for mode, argv in [("in-memory", []), ("2 workers", ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])]:
                    wall = pipeline_bm25(index_dir, query_file, argv)
                    rows.append((f"pipeline BM25 stage (bm25s, DirectRunner {mode})", f"{wall:.1f} s",
                                 f"{n / wall:,.0f} q/s = {raw / wall:.2f} x raw"))
            else:
                few = base_queries[: args.rank_bm25_queries]
                small = tmp / "few.jsonl"
                small.write_text("".join(json.dumps(q) + "\n" for q in few))
                index = bm25.BM25Shard(index_dir)
                start = time.perf_counter()
                index.search([q["text"] for q in few], DEPTH)
                direct = time.perf_counter() - start
                rows.append((f"raw rank-bm25, {len(few)} queries", f"{direct:.1f} s", f"{len(few) / direct:,.0f} q/s"))
                wall = pipeline_bm25(index_dir, small, [])
                rows.append((f"pipeline BM25 stage (rank_bm25), {len(few)} queries", f"{wall:.1f} s", f"{len(few) / wall:,.0f} q/s"))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  {'wall':>8}  throughput")
    for name, wall, thr in rows:
        print(f"{name:<{width}}  {wall:>8}  {thr}")
    print(f"\npeak RSS of this process: {peak:,.0f} MiB; {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
