"""`tripleminer report RUN_DIR`: an HTML page with plots of a mining run, to see at a glance whether
the mix is what was asked for.

Reads what a run leaves in its output folder (nested triples shards, stats.json, dead letters) with
polars, draws PNGs with matplotlib and writes `RUN_DIR/report/index.html` (or `--out`).
"""

from __future__ import annotations

import argparse
import glob
import html
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import polars as pl

RANKED = ("impression", "bm25", "ann", "same_doc")


def load_run(run_dir: str) -> Tuple[Dict[str, Any], pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """stats, positives (one row per triple row), negatives (one row per negative), dead letters."""
    with open(os.path.join(run_dir, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    if stats["config"].get("output_format", "nested") != "nested":
        raise ValueError(f"{run_dir}: the report reads nested shards; this run wrote {stats['config']['output_format']!r}")
    shards = sorted(glob.glob(os.path.join(run_dir, "triples-*.parquet")))
    if not shards:
        raise FileNotFoundError(f"{run_dir}: no triples-*.parquet shards")
    rows = pl.read_parquet(shards, columns=["query_id", "positive", "negatives"])
    positives = rows.select(pl.col("positive").struct.unnest())
    negatives = rows.select("negatives").explode("negatives").drop_nulls().unnest("negatives")
    dead_files = glob.glob(os.path.join(run_dir, "dead_letter-*.jsonl"))
    dead_rows = [json.loads(line) for f in dead_files for line in open(f, encoding="utf-8") if line.strip()]
    dead = pl.DataFrame(dead_rows, schema={"input": pl.Utf8, "reason": pl.Utf8}) if dead_rows else pl.DataFrame(
        schema={"input": pl.Utf8, "reason": pl.Utf8})
    return stats, positives, negatives, dead


def asked_per_source(stats: Dict[str, Any]) -> Dict[str, int]:
    """Negatives the mix asked for, per source: count per positive x rows."""
    from tripleminer.schemas.mix import parse_mix

    return {m.source: m.count * stats["rows"] for m in parse_mix(stats["config"].get("negatives", ""))}


def _figure(path: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return os.path.basename(path)


def plot_counts(out: str, got: Dict[str, int], asked: Dict[str, int]) -> str:
    def draw(plt):
        sources = sorted(set(got) | set(asked))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = range(len(sources))
        ax.bar([i - 0.2 for i in x], [asked.get(s, 0) for s in sources], width=0.4, label="asked (count x rows)")
        ax.bar([i + 0.2 for i in x], [got.get(s, 0) for s in sources], width=0.4, label="written")
        ax.set_xticks(list(x), sources)
        ax.set_ylabel("negatives")
        ax.set_title("Negatives per source")
        ax.legend()
        return fig

    return _figure(os.path.join(out, "negatives_per_source.png"), draw)


def plot_ranks(out: str, negatives: pl.DataFrame) -> Optional[str]:
    ranked = negatives.filter(pl.col("rank").is_not_null() & pl.col("source").is_in(RANKED))
    sources = sorted(ranked["source"].unique().to_list())
    if not sources:
        return None

    def draw(plt):
        fig, axes = plt.subplots(1, len(sources), figsize=(4 * len(sources), 3.2), squeeze=False)
        for ax, source in zip(axes[0], sources):
            ranks = ranked.filter(pl.col("source") == source)["rank"].to_list()
            ax.hist(ranks, bins=min(50, max(5, len(set(ranks)))))
            ax.set_title(f"{source}: ranks of sampled negatives")
            ax.set_xlabel("rank in the source's ranking")
        return fig

    return _figure(os.path.join(out, "ranks.png"), draw)


def plot_scores(out: str, positives: pl.DataFrame, negatives: pl.DataFrame, column: str, title: str) -> Optional[str]:
    """Histogram of `column` per negative source, with the positives' distribution where it exists."""
    if column not in negatives.columns:
        return None
    scored = negatives.filter(pl.col(column).is_not_null())
    sources = sorted(scored["source"].unique().to_list())
    pos_scores = positives[column].drop_nulls().to_list() if column in positives.columns else []
    if not sources:
        return None

    def draw(plt):
        fig, axes = plt.subplots(1, len(sources), figsize=(4 * len(sources), 3.2), squeeze=False)
        for ax, source in zip(axes[0], sources):
            ax.hist(scored.filter(pl.col("source") == source)[column].to_list(), bins=40, alpha=0.6, label=f"{source} negatives", density=True)
            if pos_scores and (column == "ce_score" or source in ("ann",)):
                ax.hist(pos_scores, bins=40, alpha=0.6, label="positives", density=True)
            ax.set_title(f"{source}: {title}")
            ax.legend(fontsize=7)
        return fig

    return _figure(os.path.join(out, f"{column}s.png"), draw)


def plot_bars(out: str, name: str, values: Dict[str, float], title: str, xlabel: str) -> Optional[str]:
    if not values:
        return None

    def draw(plt):
        fig, ax = plt.subplots(figsize=(7, max(2.0, 0.8 + 0.4 * len(values))))
        labels = list(values)
        ax.barh(labels, [values[k] for k in labels])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        return fig

    return _figure(os.path.join(out, name), draw)


def write_report(run_dir: str, out: Optional[str] = None) -> str:
    """Write the report; returns the path of its index.html."""
    out = out or os.path.join(run_dir, "report")
    os.makedirs(out, exist_ok=True)
    stats, positives, negatives, dead = load_run(run_dir)
    got = dict(negatives.group_by("source").len().iter_rows())
    asked = asked_per_source(stats)
    dead_reasons = {
        f"{i}: {r}": n
        for i, r, n in dead.with_columns(pl.col("reason").str.split(":").list.first().alias("reason"))
        .group_by(["input", "reason"]).len().sort("len", descending=True).iter_rows()
    }
    fn_rates = {s: r["rate"] for s, r in stats.get("false_negative_rate_per_source", {}).items()}
    images = [
        ("Negatives per source, asked vs written", plot_counts(out, got, asked)),
        ("Ranks of sampled negatives", plot_ranks(out, negatives)),
        ("Source scores (BM25 score, cosine, ...) of negatives, and positives' dense scores", plot_scores(out, positives, negatives, "score", "score")),
        ("Cross-encoder scores, positives vs negatives", plot_scores(out, positives, negatives, "ce_score", "CE probability")),
        ("False-negative rate per source (share flagged by the cross-encoder)", plot_bars(out, "false_negative_rate.png", fn_rates, "flagged / scored", "rate")),
        ("Dead letters by input and reason", plot_bars(out, "dead_letters.png", dead_reasons, "dead letters", "records")),
    ]
    summary = [
        ("rows (query, positive)", stats["rows"]),
        ("queries with a positive", stats.get("queries_with_positive", "-")),
        ("rows with fewer negatives than asked", stats["rows_with_fewer_negatives_than_asked"]),
        ("wall time", f"{stats['wall_time_s']} s"),
        ("negative mix", stats["config"].get("negatives", "")),
        ("seed", stats["config"].get("seed", "")),
    ] + [(f"negatives from {s}", f"{got.get(s, 0)} written / {asked.get(s, 0)} asked") for s in sorted(set(got) | set(asked))] \
      + [(f"false-negative rate of {s}", f"{r:.1%}") for s, r in sorted(fn_rates.items())] \
      + [(f"dead letters: {k}", v) for k, v in dead_reasons.items()] \
      + [(f"busy time {k}", f"{v} ms") for k, v in stats.get("busy_time_ms_per_stage", {}).items()]
    page = ["<!doctype html><meta charset='utf-8'><title>tripleminer run report</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td{padding:2px 12px}</style>",
            f"<h1>tripleminer run report</h1><p>{html.escape(os.path.abspath(run_dir))}</p><table>"]
    page += [f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary]
    page.append("</table>")
    for title, image in images:
        if image:
            page.append(f"<h2>{html.escape(title)}</h2><img src='{image}' alt='{html.escape(title)}'>")
    page.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(stats['config'], indent=2))}</pre>")
    path = os.path.join(out, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(page))
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tripleminer report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="Output folder of a `tripleminer mine` or `pretext` run (nested layout).")
    parser.add_argument("--out", default=None, help="Where to write index.html and the PNGs (default RUN_DIR/report).")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(write_report(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
