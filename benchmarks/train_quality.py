"""Retrieval quality of MiniLM fine-tuned on mined SciFact triples, per negative mix (prints a table).

Zero-shot, then one fine-tuning run per mix (`none` = in-batch negatives only), each evaluated on
SciFact test with exact search: nDCG@10, Recall@100, MRR@10. Not a test: a full run fine-tunes and
embeds the 5,183-abstract corpus once per mix (minutes each on CPU, seconds on a GPU).

    python benchmarks/train_quality.py --triples 'out/scifact/triples-*.parquet'
    python benchmarks/train_quality.py --mixes none bm25:1@10-50,ann:1@30-100 --epochs 1 --device cuda
    python benchmarks/train_quality.py --mixes bm25:1@10-50,ann:1@30-100,impression:1 --epochs 1 \
        --variants baseline= clusters=--batch_by_cluster 'hardest=--loss triplet --triplet_negative hardest_in_batch'

`--variants LABEL=TRAIN_ARGS ...` trains every mix once per variant (extra `tripleminer train` options on
top of --train_args, a later `--triples` included), so one run prints a table of training strategies
under one recipe. `--also_eval DIR ...` scores every model on more BEIR test splits (e.g. scifact-vague).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer

from tripleminer.trainer import train
from tripleminer.trainer.arguments import parse_train_args
from tripleminer.trainer.data import list_row_groups
from tripleminer.precision import cpu_native
from tripleminer.trainer.evaluate import Bf16Encoder, BeirSplit, default_data_dir, retrieve, score
from tripleminer.trainer.model import resolve_model, set_max_seq_length

COLUMNS = ("nDCG@10", "Recall@100", "MRR@10")


def negative_sources(pattern: str) -> List[str]:
    """Negative sources present in the shards, most frequent first (reads that one leaf column only)."""
    counts: Dict[str, int] = {}
    for path in sorted({g.path for g in list_row_groups([pattern])}):
        column = pq.ParquetFile(path).read(columns=["negatives.list.element.source"]).column("negatives")
        sources = pc.list_flatten(column).combine_chunks().field("source")
        for item in pc.value_counts(sources).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return sorted(counts, key=counts.get, reverse=True)


# Rank windows that skip a ranking's head, where unjudged relevant documents (false negatives) sit.
WINDOWS = {"bm25": "@10-50", "ann": "@30-100"}
EASY_SOURCES = ("random", "gold")


def default_mixes(sources: List[str]) -> List[str]:
    """In-batch only, each source alone, then all hard (ranked) sources together."""
    single = [f"{s}:1{WINDOWS.get(s, '')}" for s in sources]
    hard = [mix for s, mix in zip(sources, single) if s not in EASY_SOURCES]
    return ["none"] + single + ([",".join(hard)] if len(hard) > 1 else [])


def evaluate_dir(model_dir: str, split: BeirSplit, args: argparse.Namespace) -> Dict[str, float]:
    model = SentenceTransformer(model_dir, device=args.device)
    set_max_seq_length(model, args.eval_max_seq_length)
    encoder = Bf16Encoder(model) if eval_bf16(args) else model
    return score(split.qrels, retrieve(encoder, split.queries, split.corpus, 100, args.eval_batch_size))


def eval_bf16(args: argparse.Namespace) -> bool:
    """Encode for evaluation under bf16 autocast: --eval_precision auto on a CPU with native bf16."""
    return args.eval_precision == "auto" and args.device == "cpu" and cpu_native("bf16")


def parse_variant(spec: str) -> Tuple[str, str]:
    """`LABEL=TRAIN_ARGS` -> (label, train args); the label (no `=` in it) names the variant's rows."""
    label, sep, train_args = spec.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"--variants: expected LABEL=TRAIN_ARGS, got {spec!r}")
    return label, train_args


def train_mix(mix: str, out_dir: Path, args: argparse.Namespace, variant_args: str = "") -> str:
    argv = ["--triples", args.triples, "--negatives", mix, "--num_epochs", str(args.epochs),
            "--batch_size", str(args.batch_size), "--max_seq_length", str(args.max_seq_length),
            "--output_dir", str(out_dir), "--device", args.device, "--seed", str(args.seed), "--disable_tqdm"]
    if args.model:
        argv += ["--model_name_or_path", args.model]
    return train.run(*parse_train_args(argv + shlex.split(args.train_args) + shlex.split(variant_args)))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triples", default="out/scifact/triples-*.parquet", help="glob of nested triple shards")
    parser.add_argument("--mixes", nargs="+", help="negative mixes to train (default: none, each source, all ranked)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128, help="training truncation")
    parser.add_argument("--eval_max_seq_length", type=int, default=256, help="evaluation truncation (MiniLM's own)")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="model to start from (default: the bundled MiniLM)")
    parser.add_argument("--data_dir", default=None, help="BEIR SciFact directory (default: $TRIPLEMINER_DATA/scifact)")
    parser.add_argument("--corpus_limit", type=int, default=None, help="judged documents + N others (quick check)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train_args", default="", help="extra `tripleminer train` options, e.g. '--temperature 0.1'")
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=[("", "")],
                        help="LABEL=TRAIN_ARGS (the label without '='): train every mix once per variant with these extra options")
    parser.add_argument("--no_zero_shot", action="store_true", help="skip the zero-shot row (its model is not trained)")
    parser.add_argument("--eval_precision", choices=("auto", "fp32"), default="auto",
                        help="auto: encode the test corpus under bf16 autocast on a CPU with native bf16 (cosines in fp32)")
    parser.add_argument("--also_eval", nargs="+", default=[], metavar="DIR",
                        help="more BEIR directories whose test split scores every model (measuring only; columns DIRNAME nDCG@10 ...)")
    parser.add_argument("--work_dir", default=None, help="where models are kept (default: a temporary folder)")
    parser.add_argument("--results", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    split = BeirSplit(Path(args.data_dir) if args.data_dir else default_data_dir() / "scifact", "test",
                      corpus_limit=args.corpus_limit)
    mixes = args.mixes or default_mixes(negative_sources(args.triples))
    extra = {Path(d).name: BeirSplit(Path(d), "test", corpus_limit=args.corpus_limit) for d in args.also_eval}
    columns = COLUMNS + tuple(f"{name} {c}" for name in extra for c in COLUMNS)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="train_quality-"))

    precision = "bf16" if eval_bf16(args) else "fp32"

    def evaluate_all(model_dir: str) -> Dict[str, float]:
        scores = evaluate_dir(model_dir, split, args)
        for name, other in extra.items():
            scores.update({f"{name} {c}": v for c, v in evaluate_dir(model_dir, other, args).items()})
        return scores

    rows = []
    if not args.no_zero_shot:
        rows.append({"run": "zero-shot", **evaluate_all(resolve_model(args.model)), "seconds": 0.0, "eval_precision": precision})
    for v, (label, variant_args) in enumerate(args.variants):
        for i, mix in enumerate(mixes):
            start = time.time()
            model_dir = train_mix(mix, work / f"variant{v}-mix{i}", args, variant_args)
            seconds = time.time() - start
            name = f"{label}: negatives {mix}" if label else f"negatives {mix}"
            rows.append({"run": name, "train_args": variant_args, **evaluate_all(model_dir), "seconds": seconds,
                         "eval_precision": precision})
            print(f"{rows[-1]['run']}: nDCG@10 {rows[-1]['nDCG@10']:.4f} ({seconds:.0f} s training)", flush=True)
            if args.results:  # after every run, so a long table survives an interruption
                Path(args.results).write_text(json.dumps(rows, indent=2) + "\n")

    best = max((r for r in rows if r["run"] != "zero-shot"), key=lambda r: r["nDCG@10"], default=None)
    print(f"\nSciFact test, {len(split.queries)} queries, {len(split.corpus)} documents; device {args.device}; "
          f"{args.epochs} epoch(s), batch {args.batch_size}, train max length {args.max_seq_length}, "
          f"eval max length {args.eval_max_seq_length}{', bf16 eval encoding' if eval_bf16(args) else ''} {args.train_args}\n")
    print("| run | " + " | ".join(columns) + " | train s |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for row in rows:
        mark = " (best)" if row is best else ""
        print(f"| {row['run']}{mark} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + f" | {row['seconds']:.0f} |")
    if args.results:
        Path(args.results).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
