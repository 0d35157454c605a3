"""Dense (ANN) mining speed on SciFact train, side by side in ONE run, each case in its own process
(so peak memory is its own and the wall time is what a user waits for: interpreter start-up,
imports, Beam start-up, model load and the work):

1. sentence-transformers `mine_hard_negatives` at its defaults (fp32), with our rank window
   (ranks 30-100, 3 negatives, random sampling, n-tuple output) on the judged train pairs;
2. the same peer with the bf16 trick applied by hand (the call wrapped in
   `torch.autocast("cpu", dtype=torch.bfloat16)`), so the comparison stays honest;
3. `tripleminer mine --negatives ann:3@30-100 --precision auto`, first run (fresh work dir);
4. its rerun (the embedding cache answers);
5. in one process: raw `model.encode` under the same autocast vs the pipeline's embedding stage
   (EmbedWithCache on DirectRunner, `--precision auto`) on the same abstracts.

The issue's targets are printed under the table: (3) <= 0.40 x (1) and no slower than (2); the
embedding stage >= 0.9 x raw bf16 encode throughput.

    python benchmarks/dense_speed.py [--data ../shared/data] [--embed_docs 600] [--cases peer_fp32,...]
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

WINDOW = (30, 100)
NEGATIVES = 3


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def case_embed(args) -> dict:
    """Raw `model.encode` under autocast and the pipeline's embedding stage on the same texts, in
    this one process, both warm (the pipeline's workers load their model in setup(), counted apart)."""
    import apache_beam as beam
    import torch
    from sentence_transformers import SentenceTransformer

    from tripleminer.encoders import EncoderSettings, default_model
    from tripleminer.pipelines.stats import counters
    from tripleminer.precision import compute_at
    from tripleminer.schemas.outputs import passage_text
    from tripleminer.transforms.embed import EmbedWithCache

    texts = [passage_text(d) for d in read_jsonl(Path(args.data) / "scifact" / "corpus.jsonl")[:args.embed_docs]]
    settings = EncoderSettings(default_model(), precision="auto")
    model = SentenceTransformer(default_model(), device="cpu")
    with compute_at(settings.precision, "cpu"):
        model.encode(texts[:32], batch_size=32)  # warm-up: oneDNN picks its kernels on the first calls
        start = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True)
        raw = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "texts.jsonl"
        path.write_text("".join(json.dumps([f"d{i}", t]) + "\n" for i, t in enumerate(texts)))
        start = time.perf_counter()
        p = beam.Pipeline()
        (
            p
            | beam.io.ReadFromText(str(path))
            | beam.Map(lambda line: tuple(json.loads(line)))
            | EmbedWithCache(settings, "doc", work)
            | beam.combiners.Count.Globally()
        )
        result = p.run()
        result.wait_until_finish()
        pipeline = time.perf_counter() - start
    stage = counters(result)["time"]["embed_doc_ms"] / 1000
    return {"texts": len(texts), "raw_s": raw, "stage_s": stage, "pipeline_s": pipeline,
            "precision": settings.precision, "threads": torch.get_num_threads()}


def case_peer(args) -> dict:
    """The peer miner on the judged train pairs, as a user's script would run it."""
    import contextlib

    import torch
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
    model = SentenceTransformer(default_model(), device="cpu")
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext())
    start = time.perf_counter()
    with autocast:
        mined = mine_hard_negatives(dataset, model, corpus=list(corpus.values()), range_min=WINDOW[0],
                                    range_max=WINDOW[1], num_negatives=NEGATIVES, sampling_strategy="random",
                                    output_format="n-tuple", verbose=False)
    return {"call_s": time.perf_counter() - start, "rows": len(mined)}


def case_mine(args) -> dict:
    from tripleminer.pipelines import mine

    s = Path(args.data) / "scifact"
    stats = mine.run([
        "--corpus", str(s / "corpus.jsonl"), "--queries", str(s / "queries.jsonl"), "--qrels", str(s / "qrels" / "train.tsv"),
        "--negatives", f"ann:{NEGATIVES}@{WINDOW[0]}-{WINDOW[1]}", "--precision", "auto",
        "--work_dir", str(Path(args.work) / "work"), "--output", str(Path(args.work) / "out"), "--overwrite",
    ])
    return {"rows": stats["rows"], "embedded": stats["counters"].get("embed", {}).get("doc_texts_embedded", 0),
            "precision": stats["config"]["precision_resolved"]}


CASES = {"embed": case_embed, "peer": case_peer, "mine": case_mine}


def run_case(name: str, args, **extra) -> dict:
    """One case in a fresh interpreter; `seconds` is that process's whole wall time."""
    cmd = [sys.executable, __file__, "--case", name, "--data", args.data, "--embed_docs", str(args.embed_docs)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", "../shared/data"),
                        help="folder holding scifact/ (corpus.jsonl, queries.jsonl, qrels/train.tsv)")
    parser.add_argument("--embed_docs", type=int, default=600, help="abstracts for the embedding-stage case (5)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        result = CASES[args.case](args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    window = f"ranks {WINDOW[0]}-{WINDOW[1]}, {NEGATIVES} negatives"
    peer32 = run_case("peer", args, precision="fp32")
    peer16 = run_case("peer", args, precision="bf16")
    with tempfile.TemporaryDirectory() as work:
        first = run_case("mine", args, work=work)
        rerun = run_case("mine", args, work=work)
    embed = run_case("embed", args)
    base = peer32["seconds"]
    rows = [
        (f"1. ST mine_hard_negatives, defaults (fp32), {window}", peer32,
         f"{peer32['rows']} rows; the call alone {peer32['call_s']:.1f} s"),
        ("2. same, bf16 autocast by hand", peer16,
         f"{peer16['rows']} rows; the call alone {peer16['call_s']:.1f} s; {peer16['seconds'] / base:.2f} x (1)"),
        (f"3. tripleminer mine, first run, --precision auto ({first['precision']})", first,
         f"{first['rows']} rows, {first['embedded']} docs embedded; {first['seconds'] / base:.2f} x (1), "
         f"{first['seconds'] / peer16['seconds']:.2f} x (2)"),
        ("4. tripleminer mine, rerun (embedding cache)", rerun,
         f"{rerun['embedded']} docs embedded; {rerun['seconds'] / base:.3f} x (1)"),
    ]
    n = embed["texts"]
    raw, stage = n / embed["raw_s"], n / embed["stage_s"]
    print(f"\n| case | wall (whole process) | peak RSS | result |\n|---|---:|---:|---|")
    for name, r, note in rows:
        print(f"| {name} | {r['seconds']:.1f} s | {r['peak_rss_mib']:,.0f} MiB | {note} |")
    print(f"| 5. raw `model.encode`, {n} abstracts, autocast {embed['precision']} | {embed['raw_s']:.1f} s | "
          f"{embed['peak_rss_mib']:,.0f} MiB | {raw:.1f} texts/s |")
    print(f"| 5. pipeline embedding stage, same texts, same process | {embed['stage_s']:.1f} s | | "
          f"{stage:.1f} texts/s = {stage / raw:.2f} x raw encode (whole pipeline incl. Beam start-up and model "
          f"load {embed['pipeline_s']:.1f} s) |")
    ratio = first["seconds"] / base
    print(f"\ntargets: (3) <= 0.40 x (1): {ratio:.2f} {'met' if ratio <= 0.40 else 'NOT met'}; "
          f"(3) no slower than (2): {first['seconds']:.1f} vs {peer16['seconds']:.1f} s "
          f"{'met' if first['seconds'] <= peer16['seconds'] else 'NOT met'}; "
          f"stage >= 0.9 x raw: {stage / raw:.2f} {'met' if stage / raw >= 0.9 else 'NOT met'}")
    print(f"{os.cpu_count()} CPUs, {embed['threads']} torch threads; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
