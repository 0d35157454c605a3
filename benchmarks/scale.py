"""How mining scales with corpus size: wall time and peak memory of a BM25 + ANN mine at 10k, 50k and
200k documents, and the growth exponents (slope of log cost over log size).

Synthetic corpora are built from SciFact: each document is a run of ~40 words drawn from a SciFact
abstract at a random offset, under a new id; queries are sentences cut from documents, whose source
document is the judged positive. Short texts and `--max_seq_length 64` keep embedding on 2 CPU
cores feasible; IVF indices (4 sqrt(n) cells for a shard of n vectors) are used from 50k documents on.

    python benchmarks/scale.py [--sizes 10000,50000,200000] [--queries 2000] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_corpus(data: Path, size: int, n_queries: int, out: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    abstracts = [json.loads(line)["text"].split() for line in open(data / "scifact" / "corpus.jsonl", encoding="utf-8")]
    abstracts = [a for a in abstracts if len(a) >= 60]
    with open(out / "corpus.jsonl", "w") as corpus:
        docs = []
        for i in range(size):
            words = abstracts[rng.randrange(len(abstracts))]
            start = rng.randrange(len(words) - 40)
            docs.append(words[start:start + 40])
            corpus.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(docs[-1])}) + "\n")
    with open(out / "queries.jsonl", "w") as queries, open(out / "qrels.tsv", "w") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for q in range(n_queries):
            i = rng.randrange(size)
            start = rng.randrange(30)
            queries.write(json.dumps({"_id": f"q{q}", "text": " ".join(docs[i][start:start + 10])}) + "\n")
            qrels.write(f"q{q}\td{i}\t1\n")


def case(args) -> dict:
    from tripleminer.pipelines import mine

    d = Path(args.dir)
    size = args.size
    shards = 2
    # The index spec is per shard: 4 sqrt(n) cells for the n vectors of a shard.
    index = "Flat" if size < 50000 else f"IVF{int(4 * math.sqrt(size / shards))},Flat"
    start = time.perf_counter()
    stats = mine.run([
        "--corpus", str(d / "corpus.jsonl"), "--queries", str(d / "queries.jsonl"), "--qrels", str(d / "qrels.tsv"),
        "--negatives", "bm25:2@1-100,ann:2@101-500,random:1", "--max_seq_length", "64",
        "--ann_index", index, "--ann_nprobe", "16", "--bm25_shards", str(shards), "--ann_shards", str(shards),
        "--precision", args.precision, "--work_dir", str(d / "work"), "--output", str(d / "out"), "--overwrite",
    ])
    return {"seconds": time.perf_counter() - start, "rows": stats["rows"], "index": index,
            "precision": stats["config"]["precision_resolved"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "busy_ms": stats["busy_time_ms_per_stage"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", "../shared/data"))
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help="the mine's --precision (auto: bf16 on CPUs with native bf16)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return
    results = []
    for size in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            build_corpus(Path(args.data), size, args.queries, Path(tmp))
            run = subprocess.run([sys.executable, __file__, "--case", "--dir", tmp, "--size", str(size), "--precision", args.precision],
                                 capture_output=True, text=True)
            if run.returncode:
                raise RuntimeError(run.stderr[-3000:])
            results.append((size, json.loads(run.stdout.strip().splitlines()[-1])))
            print(f"{size}: {results[-1][1]}", file=sys.stderr)
    print(f"\nprecision {results[0][1]['precision']}")
    print(f"\n{'docs':>8}  {'index':>16}  {'wall':>8}  {'peak RSS':>9}  {'rows':>6}  embed busy  search busy")
    for size, r in results:
        b = r["busy_ms"]
        search = (b.get("bm25_search_ms", 0) + b.get("ann_search_ms", 0)) / 1000
        print(f"{size:>8}  {r['index']:>16}  {r['seconds']:>7.1f}s  {r['peak_rss_mib']:>6.0f} MiB  {r['rows']:>6}  "
              f"{b.get('embed_doc_ms', 0) / 1000:>9.1f}s  {search:>10.1f}s")
    if len(results) > 1:
        xs = [math.log(s) for s, _ in results]
        for name, key in (("wall time", "seconds"), ("peak memory", "peak_rss_mib")):
            ys = [math.log(r[key]) for _, r in results]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            print(f"growth exponent of {name}: {slope:.2f} (cost ~ size^{slope:.2f})")


if __name__ == "__main__":
    main()
