"""Cross-encoder quality and speed on SciFact: nDCG@10 of BM25 alone vs a cross-encoder trained by
`tripleminer train-cross-encoder` reranking BM25's top 100 on the test queries; and pairs/s of
scoring inside `CrossEncoderDenoise` (Beam DirectRunner) vs `CrossEncoder.predict` on the same
pairs in the same process.

    python benchmarks/crossencoder_quality.py [--data ../shared/data] [--model CE_DIR]
        [--max_queries 300] [--depth 100] [--throughput_queries 40]

Without --model it mines SciFact's train qrels (BM25 ranks 10-100 + random negatives) and trains a
cross-encoder with the --train_args given, cached under --work_dir by those settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from ranx import Qrels, Run, evaluate

from tripleminer.index import bm25
from tripleminer.pipelines import mine
from tripleminer.pipelines.stats import counters
from tripleminer.rerank import train
from tripleminer.rerank.score import load_cross_encoder, score_pairs
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.crossencoder import CrossEncoderDenoise, DenoiseSettings, false_negative_rates, pairs_per_second

# The recipe that beat BM25 on SciFact test in our runs (train defaults; ~25 s on one H100, hours on 2 CPU cores).
MINE_MIX = "bm25:2@10-100,random:1"
TRAIN_ARGS = "--negatives_per_positive all --max_length 256 --epochs 3 --batch_size 16 --learning_rate 5e-5 --seed 13"


def read_jsonl(path: Path) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> Dict[str, Dict[str, int]]:
    qrels: Dict[str, Dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return qrels


def trained_model(scifact: Path, work: Path, train_args: str) -> Path:
    """A cross-encoder trained on SciFact train triples, reused while the settings are unchanged."""
    key = hashlib.blake2b(f"{MINE_MIX}|{train_args}".encode(), digest_size=8).hexdigest()
    model_dir = work / f"ce-{key}"
    if (model_dir / train.SETTINGS_FILE).exists():
        return model_dir
    tmp = Path(tempfile.mkdtemp(prefix="ce-bench-"))
    mine.run([
        "--corpus", str(scifact / "corpus.jsonl"), "--queries", str(scifact / "queries.jsonl"),
        "--qrels", str(scifact / "qrels" / "train.tsv"), "--output", str(tmp / "mined"),
        "--work_dir", str(work), "--negatives", MINE_MIX, "--seed", "13",
    ])
    train.main(["--train_data", str(tmp / "mined" / "triples-*.parquet"), "--output_dir", str(tmp / "model"), *shlex.split(train_args)])
    shutil.move(str(tmp / "model"), str(model_dir))
    shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def bm25_run(corpus: Dict[str, dict], queries: Dict[str, str], work: Path, depth: int) -> Dict[str, Dict[str, float]]:
    ids = sorted(corpus)
    index_dir = work / "bm25-scifact"
    if not (index_dir / "doc_ids.json.gz").exists():
        bm25.build(ids, [passage_text(corpus[i]) for i in ids], bm25.BM25Settings(), str(index_dir))
    qids = sorted(queries)
    docs, scores = bm25.BM25Shard(str(index_dir)).search([queries[q] for q in qids], depth)
    return {q: dict(zip(dr, sr)) for q, dr, sr in zip(qids, docs, scores)}


def rerank(model, corpus, queries, run) -> Dict[str, Dict[str, float]]:
    keys = [(q, d) for q in sorted(run) for d in run[q]]
    scores = score_pairs(model, [(queries[q], passage_text(corpus[d])) for q, d in keys], batch_size=64)
    out: Dict[str, Dict[str, float]] = {}
    for (q, d), s in zip(keys, scores):
        out.setdefault(q, {})[d] = float(s)
    return out


def denoise_rows(corpus, queries, qrels, run) -> List[dict]:
    """One row per query: its first relevant document as positive, BM25's other top documents as negatives."""
    rows = []
    for q in sorted(run):
        pos = sorted(qrels[q])[0]
        positive = {"doc_id": pos, "title": corpus[pos]["title"], "text": corpus[pos]["text"], "source": "qrel",
                    "label": 1.0, "clicks": None, "impressions": None, "ctr": None}
        ranked = sorted(run[q].items(), key=lambda kv: -kv[1])
        negatives = [{"doc_id": d, "title": corpus[d]["title"], "text": corpus[d]["text"], "source": "bm25",
                      "rank": rank, "score": s, "ce_score": None}
                     for rank, (d, s) in enumerate(ranked, start=1) if d != pos]
        rows.append({"query_id": q, "query": queries[q], "positive": positive, "negatives": negatives})
    return rows


def throughput(model_dir: Path, rows: List[dict], model) -> dict:
    """Pairs/s of the Beam transform (wall, and busy time inside the scoring DoFn) vs predict alone."""
    pairs = [(r["query"], passage_text(n)) for r in rows for n in r["negatives"]]
    start = time.perf_counter()
    score_pairs(model, pairs, batch_size=64)
    direct = len(pairs) / (time.perf_counter() - start)

    settings = DenoiseSettings(str(model_dir), batch_pairs=512, predict_batch_size=64)
    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
    _ = p | beam.Create(rows) | CrossEncoderDenoise(settings, tempfile.mkdtemp(prefix="ce-bench-"))  # empty score cache
    start = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    wall = time.perf_counter() - start
    c = counters(result)
    return {
        "pairs": len(pairs),
        "predict_pairs_s": direct,
        "beam_wall_pairs_s": c["crossencoder"]["pairs_scored"] / wall,
        "beam_busy_pairs_s": pairs_per_second(c),
        "false_negative_rates": false_negative_rates(c["crossencoder"]),
    }


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", str(repo.parent / "shared" / "data")))
    parser.add_argument("--work_dir", default=str(repo / "work" / "bench-crossencoder"))
    parser.add_argument("--model", default=None, help="A trained cross-encoder directory; default: train one (cached).")
    parser.add_argument("--train_args", default=TRAIN_ARGS, help="Options for train-cross-encoder when training here.")
    parser.add_argument("--max_queries", type=int, default=300, help="Test queries to rerank (SciFact has 300).")
    parser.add_argument("--depth", type=int, default=100, help="BM25 candidates reranked per query.")
    parser.add_argument("--throughput_queries", type=int, default=40, help="Queries (x depth pairs) for the speed comparison.")
    a = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scifact, work = Path(a.data) / "scifact", Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    model_dir = Path(a.model) if a.model else trained_model(scifact, work, a.train_args)
    corpus = {d["_id"]: d for d in read_jsonl(scifact / "corpus.jsonl")}
    qrels = read_qrels(scifact / "qrels" / "test.tsv")
    queries = {q["_id"]: q["text"] for q in read_jsonl(scifact / "queries.jsonl") if q["_id"] in qrels}
    queries = dict(sorted(queries.items())[: a.max_queries])
    qrels = {q: qrels[q] for q in queries}

    model = load_cross_encoder(str(model_dir))
    first = bm25_run(corpus, queries, work, a.depth)
    start = time.perf_counter()
    reranked = rerank(model, corpus, queries, first)
    rerank_s = time.perf_counter() - start
    ranx_qrels = Qrels(qrels)
    bm25_ndcg = evaluate(ranx_qrels, Run(first), "ndcg@10")
    ce_ndcg = evaluate(ranx_qrels, Run(reranked), "ndcg@10")
    speed = throughput(model_dir, denoise_rows(corpus, queries, qrels, dict(list(first.items())[: a.throughput_queries])), model)

    info = json.loads((model_dir / train.SETTINGS_FILE).read_text())
    print(f"\ncross-encoder {model_dir}\n  trained on {info['pairs']} with {info['settings']} in {info['train_seconds']}s")
    print(f"\nSciFact test, {len(queries)} queries, BM25 top {a.depth} reranked ({rerank_s:.0f}s)")
    print(f"  {'system':<32}{'nDCG@10':>9}")
    print(f"  {'BM25':<32}{bm25_ndcg:>9.4f}")
    print(f"  {'BM25 + cross-encoder rerank':<32}{ce_ndcg:>9.4f}")
    print(f"\nscoring speed, {speed['pairs']} pairs, same process (torch threads {__import__('torch').get_num_threads()})")
    print(f"  {'path':<40}{'pairs/s':>9}{'ratio':>8}")
    for label, key in (("CrossEncoder.predict", "predict_pairs_s"), ("CrossEncoderDenoise, busy time", "beam_busy_pairs_s"),
                       ("CrossEncoderDenoise, pipeline wall", "beam_wall_pairs_s")):
        print(f"  {label:<40}{speed[key]:>9.1f}{speed[key] / speed['predict_pairs_s']:>8.2f}")
    print("\nflagged as likely relevant (drop_threshold 0.5) among BM25 top negatives:")
    for source, r in speed["false_negative_rates"].items():
        print(f"  {source}: {r['flagged']}/{r['scored']} = {r['rate']:.1%}")


if __name__ == "__main__":
    sys.exit(main())
