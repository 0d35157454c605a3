"""Evaluation-leakage guard, near-duplicate negatives and the audit estimate, measured on SciFact
(the "Measured" section of issue 17). Prints markdown tables; --json writes them too.

    python benchmarks/leakage_audit.py [--data ../shared/data] [--quick] [--parts leakage,near,speed,audit] [--json out.json]

1. leakage: mine SciFact train (qrels) with `--exclude_eval` at its test split, after planting
   edited copies of some test queries (1-2 words substituted, deleted, inserted or re-cased) among
   the training queries, with their test positives. Reports what the guard removes of the real
   training data (and which), the planted copies found, and the untouched training queries flagged,
   split into those whose exact word-set Jaccard with an evaluation query reaches `--leak_jaccard`
   (SciFact's own near duplicates: claims and their negations) and false hits (below it). A sweep
   of the threshold (exact Jaccard, no pipeline) shows where the default comes from.
2. near: plant near copies of training positives in the corpus (5%, 10% or 15% of the words
   reworded: substituted, dropped or doubled with corpus words), mine with and without
   `--dup_jaccard` and count the copies sampled as negatives of their original's queries.
3. speed: the whole SciFact mine (default mix, query log and qrels) with and without
   `--dup_jaccard`, warm caches, alternating, best of --reps.
4. audit: mine SciFact train from the query log alone (no --qrels: judged-relevant documents shown
   but not clicked land among the negatives), `--audit_sample N` for two N, label the sample from
   the train qrels and compare each stratum's and the overall Wilson interval with the true
   false-negative rate of ALL written negatives (known from the qrels); then the coverage of the
   intervals over --redraws re-drawn samples of the same written negatives.

--quick runs every part on a slice (about 150 training queries, 1,200 documents) with small
sample sizes, to check the script works; the full run is what the README quotes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow.parquet as pq

from tripleminer import audit, minhash
from tripleminer.pipelines import mine
from tripleminer.transforms.audit_sample import stratum
from tripleminer.transforms.leakage import DEFAULT_LEAK_JACCARD, NEGATIVE_JUDGED, POSITIVE_JUDGED, QUERY_EXACT, QUERY_NEAR

DUP_JACCARD = 0.4
SEED = 13


# ------------------------------------------------------------------ data


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: Iterable[Dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path


def read_qrels(path: Path) -> List[Tuple[str, str, float]]:
    lines = path.read_text().splitlines()[1:]
    return [(q, d, float(s)) for q, d, s in (line.split("\t") for line in lines if line.strip())]


def write_qrels(path: Path, qrels: Iterable[Tuple[str, str, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{int(s)}\n" for q, d, s in qrels))
    return path


class Data:
    """SciFact, or a slice of it (--quick) laid out as BEIR under `root`."""

    def __init__(self, scifact: Path, root: Path, quick: bool) -> None:
        self.root = root
        corpus, queries = read_jsonl(scifact / "corpus.jsonl"), read_jsonl(scifact / "queries.jsonl")
        train, test = read_qrels(scifact / "qrels" / "train.tsv"), read_qrels(scifact / "qrels" / "test.tsv")
        log = read_jsonl(scifact / "query_log.train.jsonl")
        if quick:
            rng = random.Random(SEED)
            train_ids = set(rng.sample(sorted({q for q, _, _ in train}), 150))
            test_ids = set(rng.sample(sorted({q for q, _, _ in test}), 60))
            train = [t for t in train if t[0] in train_ids]
            test = [t for t in test if t[0] in test_ids]
            keep = {d for _, d, _ in train + test} | {d for s in log if s["query_id"] in train_ids for d in s["impressions"]}
            others = sorted({d["_id"] for d in corpus} - keep)
            keep |= set(rng.sample(others, max(0, 1200 - len(keep))))
            corpus = [d for d in corpus if d["_id"] in keep]
            queries = [q for q in queries if q["_id"] in train_ids | test_ids]
            log = [s for s in log if s["query_id"] in train_ids]
        self.corpus, self.queries, self.train, self.test, self.log = corpus, queries, train, test, log
        self.text = {q["_id"]: q["text"] for q in queries}
        self.doc = {d["_id"]: d for d in corpus}
        self.corpus_path = write_jsonl(root / "scifact" / "corpus.jsonl", corpus)
        self.queries_path = write_jsonl(root / "scifact" / "queries.jsonl", queries)
        self.train_path = write_qrels(root / "scifact" / "qrels" / "train.tsv", train)
        self.eval_dir = root / "scifact"  # a BEIR folder: --exclude_eval reads its qrels/test.tsv
        write_qrels(root / "scifact" / "qrels" / "test.tsv", test)
        self.log_path = write_jsonl(root / "scifact" / "query_log.train.jsonl", log)

    @property
    def train_ids(self) -> List[str]:
        return sorted({q for q, _, _ in self.train})

    @property
    def test_ids(self) -> List[str]:
        return sorted({q for q, _, _ in self.test})


def run_mine(argv: Sequence[str]) -> Tuple[Dict[str, Any], float]:
    start = time.perf_counter()
    stats = mine.run(list(argv) + ["--overwrite"])
    return stats, time.perf_counter() - start


def shard_rows(out: Path) -> List[Dict[str, Any]]:
    return [r for f in sorted(out.glob("triples-*.parquet")) for r in pq.read_table(f).to_pylist()]


def jsonl_files(out: Path, pattern: str) -> List[Dict[str, Any]]:
    return [r for f in sorted(out.glob(pattern)) for r in read_jsonl(f)]


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ 1. leakage


def small_edit(text: str, rng: random.Random, vocab: Sequence[str]) -> Tuple[str, int]:
    words = text.split()
    n = rng.choice((1, 1, 2))
    for _ in range(n):
        op, i = rng.choice(("substitute", "delete", "insert", "case")), rng.randrange(len(words))
        if op == "substitute":
            words[i] = rng.choice(vocab)
        elif op == "delete" and len(words) > 4:
            del words[i]
        elif op == "insert":
            words.insert(i, rng.choice(vocab))
        else:
            words[i] = words[i].upper()
    return " ".join(words), n


def part_leakage(data: Data, work: Path, planted_n: int) -> Dict[str, Any]:
    rng = random.Random(SEED)
    vocab = [w for q in data.queries for w in q["text"].split()]
    planted = {}
    for tid in rng.sample(data.test_ids, planted_n):
        text, edits = small_edit(data.text[tid], rng, vocab)
        planted[f"planted-{tid}"] = {"of": tid, "text": text, "edits": edits}
    queries = write_jsonl(work / "leak" / "queries.jsonl",
                          [q for q in data.queries if q["_id"] in set(data.train_ids)] + [{"_id": k, "text": v["text"]} for k, v in planted.items()])
    qrels = write_qrels(work / "leak" / "qrels.tsv", data.train + [(k, d, s) for k, v in planted.items() for q, d, s in data.test if q == v["of"]])
    out = work / "leak" / "out"
    stats, _ = run_mine(["--corpus", str(data.corpus_path), "--queries", str(queries), "--qrels", str(qrels), "--output", str(out),
                         "--work_dir", str(work / "cache"), "--negatives", "bm25:4@1-100,gold:1,random:1", "--seed", str(SEED),
                         "--exclude_eval", str(data.eval_dir)])
    report = jsonl_files(out, "leakage-*.jsonl")
    dropped = {e["query_id"]: e for e in report if e["reason"] in (QUERY_EXACT, QUERY_NEAR)}
    eval_sets = {tid: minhash.shingles(data.text[tid], minhash.QUERY_SHINGLE) for tid in data.test_ids}

    def best_exact(text: str) -> float:
        s = minhash.shingles(text, minhash.QUERY_SHINGLE)
        return max(minhash.exact_jaccard(s, e) for e in eval_sets.values())

    real = {q: e for q, e in dropped.items() if not q.startswith("planted-")}
    natural = {q: best_exact(data.text[q]) for q in real}
    false_hits = [q for q, j in natural.items() if j < DEFAULT_LEAK_JACCARD]
    found = [k for k in planted if k in dropped]
    c = stats["counters"].get("leakage", {})
    guard = [
        ("training queries", len(data.train_ids)),
        ("... dropped: exact duplicate of a test query", sum(e["reason"] == QUERY_EXACT for e in real.values())),
        ("... dropped: near duplicate (J >= %.2f)" % DEFAULT_LEAK_JACCARD, sum(e["reason"] == QUERY_NEAR for e in real.values())),
        ("(query, positive) rows of the dropped queries", sum(len(e["positives"]) for e in real.values())),
        ("rows dropped: positive judged relevant for a test query", c.get(POSITIVE_JUDGED, 0)),
        ("candidate negatives removed: judged for a test query (rows refilled)", c.get(NEGATIVE_JUDGED, 0)),
        ("rows written", stats["rows"]),
    ]
    examples = sorted(real.values(), key=lambda e: -e["eval"][0]["jaccard"])[:: max(1, len(real) // 8)][:8]
    by_edits = collections.Counter((v["edits"], k in dropped) for k, v in planted.items())
    planted_rows = [(f"{n} edit(s)", sum(by_edits[(n, b)] for b in (True, False)), by_edits[(n, True)]) for n in (1, 2)]
    # threshold sweep with exact Jaccard (the pipeline estimates it with MinHash)
    planted_j = [minhash.exact_jaccard(minhash.shingles(v["text"], 1), eval_sets[v["of"]]) for v in planted.values()]
    train_j = [best_exact(data.text[q]) for q in data.train_ids]
    sweep = [(t, f"{np.mean([j >= t for j in planted_j]):.1%}", sum(j >= t for j in train_j)) for t in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    result = {
        "guard": guard, "planted": len(planted), "planted_found": len(found),
        "untouched_flagged": len(real), "untouched_flagged_natural": len(real) - len(false_hits), "false_hits": len(false_hits),
        "examples": [(e["query"], e["eval"][0]["query"], e["eval"][0]["jaccard"]) for e in examples], "sweep": sweep,
    }
    print("\n## 1. Leakage guard on SciFact train, --exclude_eval at its test split\n")
    print(table(["", "count"], guard))
    print("\nWhich (a spread of the dropped training queries, by Jaccard):\n")
    print(table(["training query", "test query it duplicates", "J (MinHash)"], [(a, b, j) for a, b, j in result["examples"]]))
    print(f"\nPlanted copies of test queries found: {len(found)} / {len(planted)} ({len(found) / max(1, len(planted)):.1%})\n")
    print(table(["planted", "copies", "found"], planted_rows))
    print(f"\nUntouched training queries flagged: {len(real)}: {len(real) - len(false_hits)} reach J >= {DEFAULT_LEAK_JACCARD} exactly "
          f"(SciFact's own near duplicates), {len(false_hits)} false hits (exact J below it)\n")
    print(table(["threshold", "planted found (exact J)", "untouched training queries at or above"], sweep))
    return result


# ------------------------------------------------------------------ 2. near-duplicate negatives


def reword(text: str, share: float, rng: random.Random, vocab: Sequence[str]) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(share * len(words)))):
        r = rng.random()
        words[i] = rng.choice(vocab) if r < 0.7 else "" if r < 0.85 else f"{words[i]} {rng.choice(vocab)}"
    return " ".join(w for w in words if w)


def part_near(data: Data, work: Path, copies_n: int) -> Dict[str, Any]:
    rng = random.Random(SEED)
    vocab = [w for d in data.corpus[:500] for w in d["text"].split()]
    positives_of = collections.defaultdict(set)
    for q, d, s in data.train:
        if s > 0:
            positives_of[d].add(q)
    shares = (0.05, 0.10, 0.15)
    copies = {}
    for i, d in enumerate(rng.sample(sorted(positives_of), copies_n)):
        share = shares[i % 3]
        doc = data.doc[d]
        copies[f"copy-{d}"] = {"of": d, "share": share, "title": doc["title"], "text": reword(doc["text"], share, rng, vocab)}
    corpus = write_jsonl(work / "near" / "corpus.jsonl", data.corpus + [{"_id": k, "title": v["title"], "text": v["text"]} for k, v in copies.items()])
    base = ["--corpus", str(corpus), "--queries", str(data.queries_path), "--qrels", str(data.train_path), "--work_dir", str(work / "cache"),
            "--negatives", "bm25:3@1-10,gold:1,random:1", "--seed", str(SEED)]
    found = {}
    for label, extra in (("without", []), ("with", ["--dup_jaccard", str(DUP_JACCARD)])):
        out = work / "near" / label
        stats, _ = run_mine(base + ["--output", str(out)] + extra)
        sampled = collections.Counter()
        for r in shard_rows(out):
            for n in r["negatives"]:
                c = copies.get(n["doc_id"])
                if c and r["query_id"] in positives_of[c["of"]]:
                    sampled[c["share"]] += 1
        found[label] = (sampled, stats["counters"].get("filter", {}))
    without, with_ = found["without"][0], found["with"][0]
    rows = [(f"{int(100 * s)}%", sum(1 for c in copies.values() if c["share"] == s), without[s], with_[s],
             f"{1 - with_[s] / without[s]:.1%}" if without[s] else "-") for s in shares]
    total_without, total_with = sum(without.values()), sum(with_.values())
    rows.append(("all", len(copies), total_without, total_with, f"{1 - total_with / total_without:.1%}" if total_without else "-"))
    counters = found["with"][1]
    exact = {s: sorted(minhash.exact_jaccard(minhash.shingles(f"{c['title']} {c['text']}", minhash.DOC_SHINGLE),
                                             minhash.shingles(f"{data.doc[c['of']]['title']} {data.doc[c['of']]['text']}", minhash.DOC_SHINGLE))
                       for c in copies.values() if c["share"] == s) for s in shares}
    print(f"\n## 2. Near copies of positives planted in the corpus, --dup_jaccard {DUP_JACCARD}\n")
    print(table(["words reworded", "copies planted", "sampled as negatives of their original's queries, without", "with", "removed"], rows))
    print(f"\nCandidates removed as near duplicates of a positive: {counters.get('near_duplicate_of_positive', 0)} "
          f"((positive, document) pairs found: {counters.get('near_duplicate_pairs', 0)}, planted: {len(copies)})\n")
    print(table(["words reworded", "exact J of word bigrams: min", "5th percentile", "median"],
                [(f"{int(100 * s)}%", f"{v[0]:.2f}", f"{v[len(v) // 20]:.2f}", f"{v[len(v) // 2]:.2f}") for s, v in exact.items() if v]))
    return {"rows": rows, "counters": counters}


# ------------------------------------------------------------------ 3. throughput


def part_speed(data: Data, work: Path, reps: int) -> Dict[str, Any]:
    base = ["--corpus", str(data.corpus_path), "--queries", str(data.queries_path), "--qrels", str(data.train_path),
            "--query_log", str(data.log_path), "--work_dir", str(work / "cache"), "--seed", str(SEED), "--output", str(work / "speed")]
    run_mine(base + ["--dup_jaccard", str(DUP_JACCARD)])  # warm the BM25 and MinHash index caches
    times: Dict[str, List[float]] = {"without": [], "with": []}
    busy: Dict[str, int] = {}
    rows = {}
    for _ in range(reps):
        for label, extra in (("without", []), ("with", ["--dup_jaccard", str(DUP_JACCARD)])):
            stats, wall = run_mine(base + extra)
            times[label].append(wall)
            rows[label] = stats["rows"]
            if label == "with":
                busy = {k: v for k, v in stats["busy_time_ms_per_stage"].items() if k in ("minhash_ms", "near_duplicates_ms")}
    best = {k: min(v) for k, v in times.items()}
    cost = best["with"] / best["without"] - 1
    print("\n## 3. Throughput cost of the near-duplicate check, the whole SciFact mine (default mix, warm caches)\n")
    print(table(["", "wall s (best of %d)" % reps, "rows", "rows/s"],
                [(k, f"{best[k]:.1f}", rows[k], f"{rows[k] / best[k]:.0f}") for k in ("without", "with")]))
    print(f"\nCost: {cost:+.1%} wall time; busy time inside the check: {busy}")
    return {"wall_s": best, "rows": rows, "cost": cost, "busy_ms": busy, "all_times": times}


# ------------------------------------------------------------------ 4. the audit estimate


def true_rates(rows: List[Dict[str, Any]], relevant: set) -> Tuple[Dict[str, List[int]], List[Dict[str, Any]]]:
    per: Dict[str, List[int]] = collections.defaultdict(lambda: [0, 0])
    items = []
    for r in rows:
        for n in r["negatives"]:
            h = stratum(n["source"], n["rank"])
            fn = int((r["query_id"], n["doc_id"]) in relevant)
            per[h][0] += 1
            per[h][1] += fn
            items.append({"stratum": h, "fn": fn})
    return per, items


def redraw_coverage(items: List[Dict[str, Any]], truth: Dict[str, float], overall: float, n: int, redraws: int) -> Dict[str, float]:
    """Share of re-drawn stratified samples (n per stratum) whose interval covers the truth."""
    by = collections.defaultdict(list)
    for it in items:
        by[it["stratum"]].append(it["fn"])
    populations = {h: len(v) for h, v in by.items()}
    hits = collections.Counter()
    rng = np.random.default_rng(SEED)
    for rep in range(redraws):
        sample, labels = [], {}
        for h, values in by.items():
            for j in rng.choice(len(values), size=min(n, len(values)), replace=False):
                aid = f"{h}:{j}"
                sample.append({"audit_id": aid, "stratum": h})
                labels[aid] = values[j]
        est = audit.estimate(sample, populations, labels)
        for h, s in est["strata"].items():
            lo, hi = s["interval"]
            hits[h] += lo <= truth[h] <= hi
        lo, hi = est["overall"]["interval"]
        hits["overall"] += lo <= overall <= hi
    return {k: v / redraws for k, v in hits.items()}


def part_audit(data: Data, work: Path, sizes: Sequence[int], redraws: int) -> Dict[str, Any]:
    relevant = {(q, d) for q, d, s in data.train if s > 0}
    base = ["--corpus", str(data.corpus_path), "--queries", str(data.queries_path), "--query_log", str(data.log_path),
            "--work_dir", str(work / "cache"), "--seed", str(SEED)]
    out_rows, per_n = None, {}
    for n in sizes:
        out = work / "audit" / f"n{n}"
        run_mine(base + ["--output", str(out), "--audit_sample", str(n)])
        sample, populations = audit.load_sample(str(out))
        labels = {s["audit_id"]: int((s["query_id"], s["doc_id"]) in relevant) for s in sample}
        per_n[n] = audit.estimate(sample, populations, labels)
        out_rows = out_rows or shard_rows(out)
    per, items = true_rates(out_rows, relevant)
    truth = {h: fn / pop for h, (pop, fn) in per.items()}
    total = sum(p for p, _ in per.values())
    overall = sum(fn for _, fn in per.values()) / total
    header = ["stratum", "written negatives", "true FN rate"]
    for n in sizes:
        header += [f"N={n}: estimate [95% Wilson]", "covers"]
    lines = []
    for h in sorted(per) + ["overall"]:
        line = [h, per[h][0] if h in per else total, f"{(truth[h] if h in truth else overall):.2%}"]
        for n in sizes:
            e = per_n[n]["strata"][h] if h in per else per_n[n]["overall"]
            t = truth[h] if h in truth else overall
            lo, hi = e["interval"]
            line += [f"{e['rate']:.2%} [{lo:.2%}, {hi:.2%}]", "yes" if lo <= t <= hi else "NO"]
        lines.append(line)
    print("\n## 4. Audit estimate vs the true false-negative rate (SciFact train mined from the query log alone, labels from qrels)\n")
    print(table(header, lines))
    coverage = {n: redraw_coverage(items, truth, overall, n, redraws) for n in sizes}
    print(f"\nCoverage of the 95% intervals over {redraws} re-drawn samples of the same written negatives:\n")
    print(table(["stratum"] + [f"N={n}" for n in sizes], [(h, *(f"{coverage[n].get(h, 0):.1%}" for n in sizes)) for h in sorted(per) + ["overall"]]))
    return {"truth": truth, "overall_truth": overall, "estimates": {str(n): per_n[n] for n in sizes},
            "coverage": {str(n): c for n, c in coverage.items()}}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")),
                        help="folder holding scifact/ (default: $TRIPLEMINER_DATA or ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="A slice of SciFact and small samples: checks the script, measures nothing.")
    parser.add_argument("--parts", default="leakage,near,speed,audit",
                        help="comma-separated sections to run: leakage (planted and real eval duplicates), near (planted "
                             "near copies of positives), speed (cost of the near-duplicate check), audit (interval coverage)")
    parser.add_argument("--reps", type=int, default=None, help="Repetitions of each speed run (default 3; 1 with --quick).")
    parser.add_argument("--redraws", type=int, default=None, help="Re-drawn audit samples for the coverage table (default 500; 50 with --quick).")
    parser.add_argument("--work", default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="leakage_audit-"))
    data = Data(Path(args.data) / "scifact", work / "data", args.quick)
    print(f"# leakage_audit ({'quick slice' if args.quick else 'SciFact'}: {len(data.train_ids)} training queries, "
          f"{len(data.test_ids)} test queries, {len(data.corpus)} documents)")
    results: Dict[str, Any] = {"quick": args.quick}
    if "leakage" in parts:
        results["leakage"] = part_leakage(data, work, 20 if args.quick else 100)
    if "near" in parts:
        results["near"] = part_near(data, work, 30 if args.quick else 300)
    if "speed" in parts:
        results["speed"] = part_speed(data, work, args.reps or (1 if args.quick else 3))
    if "audit" in parts:
        results["audit"] = part_audit(data, work, (10, 40) if args.quick else (50, 200), args.redraws or (50 if args.quick else 500))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
