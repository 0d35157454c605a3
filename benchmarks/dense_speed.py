"""Dense (ANN) mining speed on SciFact, each case in its own process (so peak memory is its own):

1. embedding throughput inside the pipeline (EmbedWithCache on DirectRunner) vs `model.encode`
   on the same texts, per backend;
2. whole mine on SciFact train (qrels pairs, full corpus, BM25 + ANN negatives) vs
   sentence-transformers' `mine_hard_negatives` on the same pairs, corpus and model: first run,
   and a rerun that finds the embeddings cached.

    python benchmarks/dense_speed.py [--data ../shared/data] [--embed_docs 600] [--backends torch,onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def texts_of(data: Path, n: int) -> list:
    from tripleminer.schemas.outputs import passage_text

    return [passage_text(d) for d in read_jsonl(data / "scifact" / "corpus.jsonl")[:n]]


def case_embed(args) -> dict:
    """`model.encode` and the pipeline's embedding stage on the same texts, in this one process."""
    import apache_beam as beam

    from tripleminer.encoders import Encoder, EncoderSettings, default_model
    from tripleminer.pipelines.stats import counters
    from tripleminer.transforms.embed import EmbedWithCache

    texts = texts_of(Path(args.data), args.embed_docs)
    settings = EncoderSettings(default_model(), backend=args.backend)
    encoder = Encoder(settings)
    encoder.encode(texts[:8])  # warm-up: the pipeline's workers load their model in setup(), untimed too
    start = time.perf_counter()
    encoder.encode(texts)
    direct = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "texts.jsonl"
        path.write_text("".join(json.dumps([f"d{i}", t]) + "\n" for i, t in enumerate(texts)))
        start = time.perf_counter()
        p = beam.Pipeline()
        (
            p
            | beam.io.ReadFromText(str(path))
            | beam.Map(lambda line: tuple(json.loads(line)))
            | EmbedWithCache(settings, "doc", work, max_batch_size=args.embed_docs)
            | beam.combiners.Count.Globally()
        )
        result = p.run()
        result.wait_until_finish()
        wall = time.perf_counter() - start
    stage = counters(result)["time"]["embed_doc_ms"] / 1000
    return {"seconds": wall, "texts": len(texts), "direct_seconds": direct, "stage_seconds": stage}


def case_mine(args) -> dict:
    from tripleminer.pipelines import mine

    s = Path(args.data) / "scifact"
    out = Path(args.work) / "out"
    start = time.perf_counter()
    stats = mine.run([
        "--corpus", str(s / "corpus.jsonl"), "--queries", str(s / "queries.jsonl"), "--qrels", str(s / "qrels" / "train.tsv"),
        "--negatives", "bm25:3@1-100,ann:3@30-100", "--embed_backend", args.backend,
        "--work_dir", str(Path(args.work) / "work"), "--output", str(out), "--overwrite",
    ])
    return {"seconds": time.perf_counter() - start, "rows": stats["rows"],
            "embedded": stats["counters"].get("embed", {}).get("doc_texts_embedded", 0)}


def case_st_miner(args) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from tripleminer.encoders import default_model
    from tripleminer.schemas.outputs import passage_text

    s = Path(args.data) / "scifact"
    corpus = {d["_id"]: passage_text(d) for d in read_jsonl(s / "corpus.jsonl")}
    queries = {q["_id"]: q["text"] for q in read_jsonl(s / "queries.jsonl")}
    pairs = [line.split("\t")[:2] for line in (s / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    dataset = Dataset.from_dict({"query": [queries[q] for q, _ in pairs], "answer": [corpus[d] for _, d in pairs]})
    start = time.perf_counter()
    model = SentenceTransformer(default_model())
    mined = mine_hard_negatives(dataset, model, corpus=list(corpus.values()), range_min=30, range_max=100,
                                num_negatives=3, sampling_strategy="random", use_faiss=True, batch_size=32,
                                output_format="n-tuple", verbose=False)
    return {"seconds": time.perf_counter() - start, "rows": len(mined)}


CASES = {"embed": case_embed, "mine": case_mine, "st_miner": case_st_miner}


def run_case(name: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--case", name, "--data", args.data, "--embed_docs", str(args.embed_docs)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", "../shared/data"))
    parser.add_argument("--embed_docs", type=int, default=600, help="abstracts for the embedding-throughput cases")
    parser.add_argument("--backends", default="torch,onnx", help="embedding backends to measure")
    parser.add_argument("--skip_mine", action="store_true", help="only the embedding-throughput cases")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        result = CASES[args.case](args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    rows = []
    for backend in args.backends.split(","):
        r = run_case("embed", args, backend=backend)
        n = r["texts"]
        direct = dict(r, seconds=r["direct_seconds"])
        rows.append((f"model.encode, {n} abstracts ({backend})", direct, f"{n / r['direct_seconds']:.1f} texts/s"))
        rows.append((f"pipeline embedding stage, same texts ({backend})", dict(r, seconds=r["stage_seconds"]),
                     f"{n / r['stage_seconds']:.1f} texts/s = {r['direct_seconds'] / r['stage_seconds']:.2f} x encode"))
        rows.append((f"whole embedding pipeline incl. start-up and model load ({backend})", r,
                     f"{n / r['seconds']:.1f} texts/s"))
    if not args.skip_mine:
        st = run_case("st_miner", args)
        rows.append(("sentence-transformers mine_hard_negatives (ANN 30-100)", st, f"{st['rows']} rows"))
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory() as work:
                first = run_case("mine", args, backend=backend, work=work)
                rerun = run_case("mine", args, backend=backend, work=work)
            rows.append((f"tripleminer mine, BM25 + ANN, first run ({backend})", first,
                         f"{first['rows']} rows, {first['embedded']} docs embedded, {first['seconds'] / st['seconds']:.2f} x ST miner time"))
            rows.append((f"tripleminer mine, rerun (embeddings cached) ({backend})", rerun,
                         f"{rerun['embedded']} docs embedded, {rerun['seconds'] / st['seconds']:.3f} x ST miner time"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'case':<{width}}  {'wall':>8}  {'peak RSS':>9}  result")
    for name, r, note in rows:
        print(f"{name:<{width}}  {r['seconds']:>7.1f}s  {r['peak_rss_mib']:>6.0f} MiB  {note}")
    print(f"\n{os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
