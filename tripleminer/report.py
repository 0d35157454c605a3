"""`tripleminer report RUN_DIR`: an HTML page with plots of a mining run, to see at a glance whether
the mix is what was asked for.

Reads what a run leaves in its output folder (triples shards in any `--output_format`, stats.json,
dead letters) with polars, draws PNGs with matplotlib and writes `RUN_DIR/report/index.html` (or
`--out`).

The nested layout keeps every negative's source, rank and scores, so its report shows all plots.
The flat layouts (`triplet`, `n-tuple`) keep texts only, so their report draws what stats.json and
the texts allow (negatives per source as sampled, dead letters, false-negative rates, row counts,
negatives per row, text lengths) and says on the page which plots need the nested layout.
"""

from __future__ import annotations

import argparse
import glob
import html
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import polars as pl

from tripleminer.schemas.mix import DENSE_SOURCES, HARD_SOURCES, RANKED_SOURCES, SOURCES, parse_mix
from tripleminer.schemas.outputs import OUTPUT_FORMATS

_NEGATIVE_COLUMN = re.compile(r"^negative_(\d+)$")  # n-tuple: negative_1 .. negative_N


@dataclass
class Run:
    """What the report reads of a run's output folder.

    `pairs` and `negative_texts` are the same in every layout: one row per (query, positive) in the
    shards (`row`, `anchor`, `positive`: the texts a model sees) and one per negative (`row`,
    `negative`). Only the nested layout has `positives` and `negatives` with provenance (source,
    rank, score, ce_score).
    """

    stats: Dict[str, Any]
    layout: str
    shard_rows: int  # rows in the Parquet shards, in their own layout
    pairs: pl.DataFrame
    negative_texts: pl.DataFrame
    dead: pl.DataFrame
    positives: Optional[pl.DataFrame] = None
    negatives: Optional[pl.DataFrame] = None
    ntuple_size: Optional[int] = None
    ce_flagged_files: int = 0

    @property
    def nested(self) -> bool:
        return self.layout == "nested"


def _passage(title: pl.Expr, text: pl.Expr) -> pl.Expr:
    """`schemas.outputs.passage_text` as a polars expression: the text the flat layouts hold."""
    title, text = title.fill_null("").str.strip_chars(), text.fill_null("").str.strip_chars()
    return pl.when(title != "").then(pl.concat_str([title, text], separator=" ").str.strip_chars()).otherwise(text)


def _read_nested(shards: List[str]) -> Dict[str, Any]:
    rows = pl.read_parquet(shards, columns=["query", "positive", "negatives"]).with_row_index("row")
    negatives = rows.select("row", "negatives").explode("negatives").drop_nulls("negatives").unnest("negatives")
    positive = pl.col("positive").struct
    return {
        "shard_rows": rows.height,
        "positives": rows.select(pl.col("positive").struct.unnest()),
        "negatives": negatives,
        "pairs": rows.select("row", anchor=pl.col("query"), positive=_passage(positive.field("title"), positive.field("text"))),
        "negative_texts": negatives.select("row", negative=_passage(pl.col("title"), pl.col("text"))),
    }


def _read_triplet(shards: List[str]) -> Dict[str, Any]:
    flat = pl.read_parquet(shards, columns=["anchor", "positive", "negative"])
    # A (query, positive) row of the miner is one triplet per negative: group them back.
    grouped = flat.group_by(["anchor", "positive"], maintain_order=True).agg("negative").with_row_index("row")
    return {
        "shard_rows": flat.height,
        "pairs": grouped.select("row", "anchor", "positive"),
        "negative_texts": grouped.select("row", "negative").explode("negative"),
    }


def _read_ntuple(shards: List[str]) -> Dict[str, Any]:
    columns = [c for c in pl.read_parquet_schema(shards[0]) if _NEGATIVE_COLUMN.match(c)]
    columns.sort(key=lambda c: int(_NEGATIVE_COLUMN.match(c).group(1)))
    flat = pl.read_parquet(shards, columns=["anchor", "positive", *columns]).with_row_index("row")
    return {
        "shard_rows": flat.height,
        "ntuple_size": len(columns),
        "pairs": flat.select("row", "anchor", "positive"),
        "negative_texts": flat.unpivot(index="row", on=columns, value_name="negative").select("row", "negative"),
    }


_READERS: Dict[str, Callable[[List[str]], Dict[str, Any]]] = {
    "nested": _read_nested, "triplet": _read_triplet, "n-tuple": _read_ntuple,
}


def _dead_letters(run_dir: str) -> pl.DataFrame:
    schema = {"input": pl.Utf8, "reason": pl.Utf8}
    rows = []
    for path in sorted(glob.glob(os.path.join(run_dir, "dead_letter-*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            rows += [{k: json.loads(line).get(k) for k in schema} for line in f if line.strip()]
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def load_run(run_dir: str) -> Run:
    """Read stats.json, the shards (in the layout the run wrote) and the dead letters of a run."""
    with open(os.path.join(run_dir, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    layout = stats["config"].get("output_format", "nested")
    if layout not in _READERS:
        raise ValueError(f"{run_dir}: unknown output_format {layout!r}; the report reads {OUTPUT_FORMATS}")
    shards = sorted(glob.glob(os.path.join(run_dir, "triples-*.parquet")))
    if not shards:
        raise FileNotFoundError(f"{run_dir}: no triples-*.parquet shards")
    return Run(stats=stats, layout=layout, dead=_dead_letters(run_dir),
               ce_flagged_files=len(glob.glob(os.path.join(run_dir, "ce_flagged-*.jsonl"))), **_READERS[layout](shards))


def mix_sources(stats: Dict[str, Any]) -> List[str]:
    return [m.source for m in parse_mix(stats["config"].get("negatives", ""))]


def asked_per_source(stats: Dict[str, Any]) -> Dict[str, int]:
    """Negatives the mix asked for, per source: count per positive x rows."""
    return {m.source: m.count * stats["rows"] for m in parse_mix(stats["config"].get("negatives", ""))}


def ordered(sources: Iterable[str]) -> List[str]:
    """Sources in the order of the source table (`schemas.mix.SOURCES`), any it lacks after them."""
    sources = set(sources)
    return [s for s in SOURCES if s in sources] + sorted(sources - set(SOURCES))


def cross_encoder_ran(stats: Dict[str, Any]) -> bool:
    return bool(stats["config"].get("cross_encoder")) or bool(stats.get("counters", {}).get("crossencoder"))


def negatives_per_source(run: Run) -> Tuple[Dict[str, int], str]:
    """Negatives per source and what they count: "written" (in the shards) or "sampled" (stats).

    The nested shards say each negative's source. The flat ones do not, so their counts are the
    sampler's (stats.json); they are also the written ones when every sampled negative reached the
    shards, which holds when no cross-encoder ran (the only step that adds negatives, by
    augmentation) and the shards hold as many negatives as were sampled.
    """
    if run.nested:
        return dict(run.negatives.group_by("source").len().iter_rows()), "written"
    sampled = dict(run.stats.get("negatives_per_source", {}))
    exact = not cross_encoder_ran(run.stats) and sum(sampled.values()) == run.negative_texts.height
    return sampled, "written" if exact else "sampled"


def negatives_per_row(run: Run) -> pl.Series:
    """How many negatives each (query, positive) row of the shards has."""
    counts = run.negative_texts.group_by("row").len()
    return run.pairs.select("row").join(counts, on="row", how="left")["len"].fill_null(0)


def word_counts(run: Run) -> Dict[str, pl.Series]:
    """Whitespace-separated words of the anchors and positives (per row) and of the negatives."""
    words = lambda s: s.str.count_matches(r"\S+").drop_nulls()  # noqa: E731
    return {"anchor (query)": words(run.pairs["anchor"]), "positive": words(run.pairs["positive"]),
            "negative": words(run.negative_texts["negative"])}


def same_text_as_positive(run: Run) -> int:
    """Negatives whose text is their row's positive's: duplicates in the corpus, false negatives for sure."""
    return run.negative_texts.join(run.pairs, on="row").filter(pl.col("negative") == pl.col("positive")).height


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _figure(path: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return os.path.basename(path)


def plot_counts(out: str, got: Dict[str, int], asked: Dict[str, int], label: str = "written",
                dropped: Optional[Dict[str, int]] = None) -> str:
    bars = [("asked (count x rows)", asked), (label, got)] + ([("dropped by the cross-encoder", dropped)] if dropped else [])

    def draw(plt):
        sources = ordered(set(got) | set(asked))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(bars)
        for j, (name, values) in enumerate(bars):
            offset = (j - (len(bars) - 1) / 2) * width
            ax.bar([i + offset for i in range(len(sources))], [values.get(s, 0) for s in sources], width=width, label=name)
        ax.set_xticks(list(range(len(sources))), sources)
        ax.set_ylabel("negatives")
        ax.set_title("Negatives per source")
        ax.legend(fontsize=8)
        return fig

    return _figure(os.path.join(out, "negatives_per_source.png"), draw)


def plot_negatives_per_row(out: str, counts: pl.Series, asked: int) -> Optional[str]:
    if counts.is_empty() or (counts.n_unique() == 1 and counts[0] == asked):
        return None  # every row as asked: nothing to see

    def draw(plt):
        values = dict(counts.value_counts().iter_rows())
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(list(values), list(values.values()))
        ax.axvline(asked, color="tab:red", linestyle="--", label=f"asked: {asked}")
        from matplotlib.ticker import MaxNLocator

        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("negatives in the row")
        ax.set_ylabel("(query, positive) rows")
        ax.set_title("Negatives per (query, positive) row")
        ax.legend(fontsize=8)
        return fig

    return _figure(os.path.join(out, "negatives_per_row.png"), draw)


def plot_ranks(out: str, negatives: pl.DataFrame) -> Optional[str]:
    ranked = negatives.filter(pl.col("rank").is_not_null() & pl.col("source").is_in(RANKED_SOURCES))
    sources = ordered(ranked["source"].unique().to_list())
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
    """Histogram of `column` per negative source, with the positives' distribution where comparable:
    always for cross-encoder scores, for source scores only beside the dense sources' cosines."""
    if column not in negatives.columns:
        return None
    scored = negatives.filter(pl.col(column).is_not_null())
    sources = ordered(scored["source"].unique().to_list())
    pos_scores = positives[column].drop_nulls().to_list() if column in positives.columns else []
    if not sources:
        return None

    def draw(plt):
        fig, axes = plt.subplots(1, len(sources), figsize=(4 * len(sources), 3.2), squeeze=False)
        for ax, source in zip(axes[0], sources):
            ax.hist(scored.filter(pl.col("source") == source)[column].to_list(), bins=40, alpha=0.6, label=f"{source} negatives", density=True)
            if pos_scores and (column == "ce_score" or source in DENSE_SOURCES):
                ax.hist(pos_scores, bins=40, alpha=0.6, label="positives", density=True)
            ax.set_title(f"{source}: {title}")
            ax.legend(fontsize=7)
        return fig

    return _figure(os.path.join(out, f"{column}s.png"), draw)


def plot_lengths(out: str, words: Dict[str, pl.Series]) -> Optional[str]:
    shown = {k: v for k, v in words.items() if not v.is_empty()}
    if not shown:
        return None

    def draw(plt):
        fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2), squeeze=False)
        for ax, (name, values) in zip(axes[0], shown.items()):
            ax.hist(values.to_list(), bins=40)
            p95 = values.quantile(0.95)
            ax.axvline(p95, color="tab:red", linestyle="--", label=f"95th percentile: {p95:.0f}")
            ax.set_title(f"{name}: median {values.median():.0f} words")
            ax.set_xlabel("words")
            ax.legend(fontsize=7)
        return fig

    return _figure(os.path.join(out, "text_lengths.png"), draw)


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


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def left_out(run: Run) -> List[str]:
    """The nested report's plots that a flat run's rows cannot give, with what this run would show."""
    if run.nested:
        return []
    mix = mix_sources(run.stats)
    ranked = [s for s in RANKED_SOURCES if s in mix]
    dense = [s for s in DENSE_SOURCES if s in mix]
    ce = cross_encoder_ran(run.stats)
    items = [
        "Ranks of the sampled negatives per ranked source"
        + (f" (in this mix: {', '.join(ranked)})" if ranked else f" ({', '.join(RANKED_SOURCES)}; none in this mix)"),
        "Source scores (BM25 score, cosine, ...) of each source's negatives",
        "Dense scores of the positives beside the dense sources' negatives"
        + (f" (in this mix: {', '.join(dense)})" if dense else f" (needs {' or '.join(DENSE_SOURCES)} in the mix)"),
        "Cross-encoder scores of positives vs negatives"
        + (" (this run scored them, but the flat rows do not keep scores)" if ce else " (needs --cross_encoder)"),
    ]
    if negatives_per_source(run)[1] != "written":
        items.append("Negatives written per source: the flat rows do not say which source a negative came "
                     "from, so the per-source counts above are as sampled")
    return items


def guard_summary(stats: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """What the leakage guard and the near-duplicate filter dropped, by reason (from the counters)."""
    counters = stats.get("counters", {})
    rows: List[Tuple[str, Any]] = [(f"leakage: {k}", v) for k, v in counters.get("leakage", {}).items()]
    near = counters.get("filter", {})
    rows += [(f"filter: {k} (candidates removed)" if k.startswith("near_duplicate_of_positive") else f"filter: {k}", v)
             for k, v in near.items() if k.startswith("near_duplicate")]
    return rows


POSITIVE_SOURCE_COUNTERS = ("failed_search", "bm25_teacher")  # label sources that count their own work


def positive_source_summary(stats: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """The counters of the label sources that keep their own: failed searches found, how each ended and
    the pairs each filter kept or rejected (`transforms.failed_search`); queries the BM25 teacher searched
    or left to their labels and the positives it made (`transforms.bm25_teacher`). Nothing for a source
    the run did not use."""
    counters = stats.get("counters", {})
    return [(f"{ns}: {k.replace('_', ' ')}", v) for ns in POSITIVE_SOURCE_COUNTERS for k, v in counters.get(ns, {}).items()]


def audit_section(run_dir: str) -> Optional[str]:
    """The audit estimate (`tripleminer audit`) as an HTML table, a hint where only the sample exists, else None."""
    from tripleminer.audit import ESTIMATE_FILE, SAMPLE_GLOB

    path = os.path.join(run_dir, ESTIMATE_FILE)
    title = "<h2 id='audit'>False negatives left (audit sample)</h2>"
    if not os.path.exists(path):
        if glob.glob(os.path.join(run_dir, SAMPLE_GLOB)):
            return (title + "<p class='note'>This run wrote an audit sample (audit-*.jsonl). Label it and run "
                    "<code>tripleminer audit RUN_DIR --labels FILE</code> (or <code>--judge MODEL</code>) to see the estimate here.</p>")
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    interval = lambda i: "-" if not i else f"[{pct(i[0])}, {pct(i[1])}]"  # noqa: E731
    level = f"{100 * result['confidence']:.0f}%"
    labels = result.get("labels", {})
    who = f"judge {labels['judge']} (P >= {labels['threshold']})" if "judge" in labels else f"labels {labels.get('file', '')}"
    cells = ["<tr><th>stratum</th><th>written negatives</th><th>labelled</th><th>false negatives</th><th>rate</th>"
             f"<th>{level} Wilson interval</th></tr>"]
    for name, h in result["strata"].items():
        cells.append(f"<tr><td>{html.escape(name)}</td><td>{h['population']}</td><td>{h['labelled']}</td><td>{h['false_negatives']}</td>"
                     f"<td>{pct(h['rate'])}</td><td>{interval(h['interval'])}</td></tr>")
    o = result["overall"]
    cells.append(f"<tr><td><b>overall (weighted to the population)</b></td><td>{o['population']}</td><td>{o['labelled']}</td>"
                 f"<td>{o['false_negatives']}</td><td><b>{pct(o['rate'])}</b></td><td>{interval(o['interval'])}</td></tr>")
    return (title + f"<p class='note'>Estimated share of the written negatives that are actually relevant, from {html.escape(who)}.</p>"
            "<table>" + "".join(cells) + "</table>")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _words_summary(values: pl.Series) -> str:
    if values.is_empty():
        return "-"
    return f"median {values.median():.0f}, 95th percentile {values.quantile(0.95):.0f}, max {values.max()}"


def write_report(run_dir: str, out: Optional[str] = None) -> str:
    """Write the report; returns the path of its index.html."""
    out = out or os.path.join(run_dir, "report")
    os.makedirs(out, exist_ok=True)
    run = load_run(run_dir)
    stats = run.stats
    got, counted = negatives_per_source(run)
    asked = asked_per_source(stats)
    asked_per_row = sum(m.count for m in parse_mix(stats["config"].get("negatives", "")))
    per_row = negatives_per_row(run)
    words = word_counts(run)
    fn = stats.get("false_negative_rate_per_source", {})
    fn_rates = {s: fn[s]["rate"] for s in ordered(fn)}
    dropped = {s: r["flagged"] for s, r in fn.items()} if not run.nested else None
    dead_reasons = {
        f"{i}: {r}": n
        for i, r, n in run.dead.with_columns(pl.col("reason").str.split(":").list.first().alias("reason"))
        .group_by(["input", "reason"]).len().sort("len", descending=True).iter_rows()
    }
    no_ce = "No cross-encoder in this run (--cross_encoder), so nothing was scored."
    images: List[Tuple[str, Optional[str], Optional[str]]] = [  # title, PNG, what to say when there is none
        (f"Negatives per source, asked vs {counted}", plot_counts(out, got, asked, counted, dropped), None),
        ("Negatives per (query, positive) row",
         None if run.layout == "n-tuple" else plot_negatives_per_row(out, per_row, asked_per_row),
         "No rows in the shards." if per_row.is_empty() else
         f"Every n-tuple row has {run.ntuple_size} negatives (the writer drops rows with fewer)."
         if run.layout == "n-tuple" else f"Every row has {asked_per_row} negatives, as asked."),
        ("Text lengths (the texts a model sees: title and body)", plot_lengths(out, words), "No texts in the shards."),
    ]
    if run.nested:
        images += [
            ("Ranks of sampled negatives", plot_ranks(out, run.negatives), "No ranked source in this mix."),
            ("Source scores (BM25 score, cosine, ...) of negatives, and positives' dense scores",
             plot_scores(out, run.positives, run.negatives, "score", "score"), "No source scored its negatives."),
            ("Cross-encoder scores, positives vs negatives",
             plot_scores(out, run.positives, run.negatives, "ce_score", "CE probability"), no_ce),
        ]
    images += [
        ("False-negative rate per source (share flagged by the cross-encoder)",
         plot_bars(out, "false_negative_rate.png", fn_rates, "flagged / scored", "rate"), no_ce),
        ("Dead letters by input and reason", plot_bars(out, "dead_letters.png", dead_reasons, "dead letters", "records"),
         "No dead letters: every input record was read."),
    ]

    layout = run.layout + (f" (N = {run.ntuple_size})" if run.layout == "n-tuple" else "")
    total_got = sum(got.values())
    summary = [
        ("output layout", layout),
        ("rows (query, positive)", stats["rows"]),
        ("queries with a positive", stats.get("queries_with_positive", "-")),
        ("rows with fewer negatives than asked", stats.get("rows_with_fewer_negatives_than_asked", "-")),
    ]
    if not run.nested:
        summary += [
            (f"{run.layout} rows in the shards", run.shard_rows),
            ("(anchor, positive) pairs in the shards", run.pairs.height),
            ("distinct anchors in the shards", run.pairs["anchor"].n_unique()),
        ]
        dropped_rows = stats.get("counters", {}).get("rows", {}).get(f"{run.layout}_rows_dropped_too_few_negatives")
        if dropped_rows is not None:
            summary.append((f"rows dropped by the writer: fewer than {run.ntuple_size} negatives", dropped_rows))
    summary += [
        ("negatives in the shards", run.negative_texts.height),
        ("negatives with the same text as their row's positive", same_text_as_positive(run)),
        *guard_summary(stats),
        *positive_source_summary(stats),
        ("wall time", f"{stats.get('wall_time_s', '-')} s"),
        ("negative mix", stats["config"].get("negatives", "")),
        ("seed", stats["config"].get("seed", "")),
    ]
    summary += [(f"negatives from {s}", f"{got.get(s, 0)} {counted} / {asked.get(s, 0)} asked") for s in ordered(set(got) | set(asked))]
    if total_got:
        hard = sum(n for s, n in got.items() if s in HARD_SOURCES)
        summary.append((f"hard negatives ({', '.join(s for s in HARD_SOURCES if s in got) or 'none'})",
                        f"{hard / total_got:.1%} of {counted}"))
    summary += [(f"words per {k}", _words_summary(v)) for k, v in words.items()]
    summary += [(f"false-negative rate of {s}", f"{r:.1%}") for s, r in fn_rates.items()]
    summary += [(f"dead letters: {k}", v) for k, v in dead_reasons.items()]
    summary += [(f"busy time {k}", f"{v} ms") for k, v in stats.get("busy_time_ms_per_stage", {}).items()]

    page = ["<!doctype html><meta charset='utf-8'><title>tripleminer run report</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td{padding:2px 12px}"
            ".note{color:#555}</style>",
            f"<h1>tripleminer run report</h1><p>{html.escape(os.path.abspath(run_dir))}</p>"]
    if not run.nested:
        page.append(f"<p class='note'>This run wrote the flat <b>{html.escape(run.layout)}</b> layout, which keeps the "
                    "texts only (the columns sentence-transformers takes by position). The numbers per source come "
                    "from stats.json; the plots that need each negative's source, rank or scores are listed at the "
                    "end, under <a href='#left-out'>Left out</a>.</p>")
    page.append("<table>")
    page += [f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary]
    page.append("</table>")
    if not run.nested and counted != "written":
        page.append("<p class='note'>Negatives per source are counted when sampled; after that, negatives without "
                    "a text, those the cross-encoder dropped, and (n-tuple) those past N or in rows with fewer than N "
                    "are not written, and the flat rows do not say from which source.</p>")
    for title, image, none in images:
        if image:
            page.append(f"<h2 id='{_slug(title)}'>{html.escape(title)}</h2><img src='{image}' alt='{html.escape(title)}'>")
        elif none:
            page.append(f"<h2 id='{_slug(title)}'>{html.escape(title)}</h2><p class='note'>{html.escape(none)}</p>")
    audit = audit_section(run_dir)
    if audit:
        page.append(audit)
    missing = left_out(run)
    if missing:
        page.append(f"<h2 id='left-out'>Left out: needs the nested layout</h2><p>The {html.escape(run.layout)} rows "
                    "do not record each negative's source, rank or scores, so these plots of the nested report are "
                    "left out:</p><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul>"
                    "<p>To see them, mine again with <code>--output_format nested</code> and the same "
                    "<code>--work_dir</code> (cached indices, embeddings and cross-encoder scores are reused), "
                    "and run the report on that output.</p>")
        if run.ce_flagged_files:
            page.append("<p class='note'>The negatives the cross-encoder dropped are listed with their source, rank "
                        "and scores in <code>ce_flagged-*.jsonl</code> beside the shards.</p>")
    page.append(f"<h2 id='configuration'>Configuration</h2><pre>{html.escape(json.dumps(stats['config'], indent=2))}</pre>")
    path = os.path.join(out, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(page))
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tripleminer report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="Output folder of a `tripleminer mine` or `pretext` run (any --output_format; "
                                        "the nested layout gives the full report).")
    parser.add_argument("--out", default=None, help="Where to write index.html and the PNGs (default RUN_DIR/report).")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(write_report(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
