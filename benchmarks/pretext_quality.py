"""Label-free domain adaptation: MiniLM fine-tuned on pretext triples of the SciFact corpus ONLY (no
queries, no qrels, no log), one row per generator and the mixes asked for, then SciFact test (prints a table).

    HF_HUB_OFFLINE=1 python benchmarks/pretext_quality.py                       # every generator (about an hour on 2 CPU cores)
    python benchmarks/pretext_quality.py --rows title salient-bm25 --mixes 'title+salient=--generators title:0.1,salient:0.1'
    python benchmarks/pretext_quality.py --train_args '--learning_rate 2e-5'    # the same table at another recipe

Each row runs `tripleminer pretext` on the corpus with the row's generators at --rate pairs per document
(0.2: about 1,000 pairs, the size of SciFact's 919 judged train pairs, so every row trains as many steps
as a labelled run would) and --negatives (bm25 ranks 10-50, where the pseudo-query's near-duplicates of
its own document thin out, plus one random), seeded by --seed; the rows are cached under --work_dir,
so a rerun only trains (models go to a new folder there each run). Then one
`benchmarks/train_quality.py` run trains `tripleminer train` once per row under one recipe (1 epoch,
batch 32, max length 128, the trainer's learning rate unless --train_args says otherwise, same seed)
and scores zero-shot and every model on SciFact test with exact search. Nothing
reads SciFact's queries or qrels except that final evaluation.
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

import train_quality
from tripleminer.logs import setup_logging
from tripleminer.pipelines import pretext
from tripleminer.trainer.evaluate import default_data_dir

# Each generator alone: the row's label -> (generator, extra pretext options).
GENERATOR_ROWS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "ict": ("ict", ()),
    "crop": ("crop", ()),
    "span": ("span", ()),
    "title": ("title", ()),
    "salient-bm25": ("salient", ("--salient_scorer", "bm25")),
    "salient-dense": ("salient", ("--salient_scorer", "dense")),
    "neighbors": ("neighbors", ()),
}


def parse_mix_row(spec: str) -> Tuple[str, List[str]]:
    """`LABEL=PRETEXT_ARGS` -> (label, pretext options); the options name their own --generators and rates."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or "--generators" not in rest:
        raise argparse.ArgumentTypeError(f"--mixes: expected LABEL=--generators ... [options], got {spec!r}")
    return label, shlex.split(rest)


def row_args(args: argparse.Namespace) -> List[Tuple[str, List[str]]]:
    """Every row to mine: the generators alone at --rate, then the explicit mixes."""
    rows = [(label, ["--generators", f"{GENERATOR_ROWS[label][0]}:{args.rate}", *GENERATOR_ROWS[label][1]])
            for label in args.rows]
    return rows + list(args.mixes)


def mine_row(label: str, options: List[str], corpus: Path, args: argparse.Namespace) -> Dict[str, object]:
    """`tripleminer pretext` for one row, skipped when an earlier run mined it with the same argv
    (recorded beside the row's output, which the pipeline's --overwrite clears)."""
    out = Path(args.work_dir) / "rows" / label
    argv = ["--corpus", str(corpus), "--output", str(out), "--work_dir", str(Path(args.work_dir) / "cache"),
            "--negatives", args.negatives, "--seed", str(args.seed), "--device", "cpu", "--overwrite", *options]
    mined_path = out.with_name(f"{label}.mined.json")
    cached = json.loads(mined_path.read_text()) if mined_path.exists() else None
    if cached is None or cached["argv"] != argv:
        start = time.time()
        rows = pretext.SPEC.run(argv)["rows"]
        cached = {"argv": argv, "rows": rows, "mine_s": round(time.time() - start, 1)}
        mined_path.write_text(json.dumps(cached, indent=2) + "\n")
    return {"label": label, "pretext_args": options, "rows": cached["rows"], "mine_s": cached["mine_s"],
            "triples": str(out / "triples-*.parquet")}


# What makes two results the same cell: a rerun replaces a row only when all of these match.
# eval_precision (train_quality's bf16 or fp32 encoding) moves nDCG@10 by about 0.002.
RESULT_KEY = ("row", "train_args", "negatives", "seed", "epochs", "eval_precision")


def merge_results(path: Path, table: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Rows of earlier runs stay in --results unless this run retrained them (same RESULT_KEY)."""
    fresh = {tuple(r[k] for k in RESULT_KEY) for r in table}
    earlier = json.loads(path.read_text()) if path.exists() else []
    merged = [r for r in earlier if tuple(r[k] for k in RESULT_KEY) not in fresh] + table
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def print_table(table: List[Dict[str, object]]) -> None:
    print("\nLabel-free: pretext rows of the SciFact corpus only; SciFact test\n")
    print("| row | pretext options | negatives | seed | epochs | train args | eval | rows | nDCG@10 | Recall@100 | MRR@10 "
          "| mine s | train s |")
    print("|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in table:
        options = " ".join(r.get("pretext_args", [])) or "-"
        print(f"| {r['row']} | `{options}` | `{r['negatives']}` | {r['seed']} | {r['epochs']} | `{r['train_args'] or '-'}` "
              f"| {r['eval_precision']} | {r['rows']:,} | {r['nDCG@10']:.4f} | {r['Recall@100']:.4f} | {r['MRR@10']:.4f} | {r['mine_s']:.0f} "
              f"| {r['train_s']:.0f} |")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", choices=list(GENERATOR_ROWS), default=list(GENERATOR_ROWS),
                        help="generators to train alone, each at --rate")
    parser.add_argument("--mixes", nargs="*", type=parse_mix_row, default=[],
                        help="more rows, LABEL=PRETEXT_ARGS with their own --generators and rates")
    parser.add_argument("--rate", type=float, default=0.2, help="pairs per document of each generator alone")
    parser.add_argument("--negatives", default="bm25:1@10-50,random:1", help="tripleminer pretext --negatives of every row")
    parser.add_argument("--seed", type=int, default=13, help="pretext and training seed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train_args", default="", help="extra `tripleminer train` options for every row")
    parser.add_argument("--no_zero_shot", action="store_true", help="skip the zero-shot row")
    parser.add_argument("--data_dir", default=None, help="BEIR SciFact directory (default: $TRIPLEMINER_DATA/scifact)")
    parser.add_argument("--work_dir", default="work/pretext_quality", help="pretext rows, their cache and the models (reused)")
    parser.add_argument("--results", default="benchmarks/results/pretext_quality.json", help="the table's rows as JSON")
    parser.add_argument("--table_only", action="store_true", help="print the table from --results, run nothing")
    args = parser.parse_args(argv)
    if args.table_only:
        print_table(json.loads(Path(args.results).read_text()))
        return 0
    setup_logging()
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir() / "scifact"
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)

    mined = [mine_row(label, options, data_dir / "corpus.jsonl", args) for label, options in row_args(args)]
    if not mined:
        parser.error("no rows: give --rows or --mixes")
    trained = Path(args.work_dir) / "train_quality.json"
    train_argv = ["--triples", mined[0]["triples"], "--mixes", args.negatives, "--epochs", str(args.epochs),
                  "--seed", str(args.seed), "--device", "cpu", "--data_dir", str(data_dir),
                  "--work_dir", tempfile.mkdtemp(prefix="models-", dir=args.work_dir), "--results", str(trained),
                  "--train_args", args.train_args,
                  "--variants", *[f"{m['label']}=--triples {m['triples']}" for m in mined]]
    train_quality.main(train_argv + (["--no_zero_shot"] if args.no_zero_shot else []))

    by_label = {m["label"]: m for m in mined}
    table = []
    for row in json.loads(trained.read_text()):
        label = row["run"].split(":")[0]
        table.append({"row": label, **by_label.get(label, {"rows": 0, "mine_s": 0.0}),
                      **{c: row[c] for c in train_quality.COLUMNS}, "train_s": round(row["seconds"], 1),
                      "train_args": args.train_args, "negatives": args.negatives, "seed": args.seed,
                      "epochs": args.epochs, "eval_precision": row["eval_precision"]})
    table = merge_results(Path(args.results), table)
    print_table(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
