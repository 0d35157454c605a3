"""Failed-search hard positives measured against the journeys log's truth (issue 14): pairs,
precision and recall of the naive rule, of "+ shares a content word", of the default filter, of
each filter left out, and a sweep of the two thresholds that trade recall for precision.

    python benchmarks/failed_search.py [--data ../shared/data] [--json out.json]

Truth: `query_log_journeys.train.truth.jsonl` says which train query each failed rewrite `f<n>`
rewords; that query's judged-relevant documents (qrels/train.tsv) are the failed search's true
targets. Precision is over the pairs a rule keeps (a pair of a failed search that is no rewrite
counts as wrong); recall over every failed rewrite's judged documents (694), as in the issue.
The rules run through the pipeline's own pure functions (`tripleminer.transforms.failed_search`),
on CPU in seconds: no index, no model, no training. tests/test_failed_search.py checks that the
pipeline keeps exactly the default's pairs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Set, Tuple

from tripleminer.schemas.inputs import validate_session
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms import failed_search as fs

Pair = Tuple[str, str]  # (failed query id, doc id)


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def journeys(log: Path) -> List[List[fs.Search]]:
    """The log's searches grouped by user session."""
    by_user: Dict[str, List[fs.Search]] = collections.defaultdict(list)
    for record in map(validate_session, read_jsonl(log)):
        by_user[record["user_session_id"]].append(fs.Search.of(record))
    return [by_user[u] for u in sorted(by_user)]


def all_candidates(sessions: Iterable[List[fs.Search]], settings: fs.FailedSearchSettings, through_failed: bool) -> List[fs.Candidate]:
    out = []
    for searches in sessions:
        for found in fs.failed_searches(searches, settings.window_s, through_failed):
            if found.followup is not None and found.failed.query and found.followup.query:
                out += fs.candidates(found, settings.stemmer)
    return out


def targets(scifact: Path) -> Dict[str, Set[str]]:
    """Failed query id -> its true targets: the judged documents of the query it rewords."""
    judged: Dict[str, Set[str]] = collections.defaultdict(set)
    for line in (scifact / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, score = line.split("\t")
        if float(score) >= 1:
            judged[q].add(d)
    truth = read_jsonl(scifact / "query_log_journeys.train.truth.jsonl")
    return {t["query_id"]: judged[t["rewrite_of"]] for t in truth}


def measure(pairs: Iterable[Pair], truth: Dict[str, Set[str]]) -> Dict[str, float]:
    pairs = set(pairs)
    right = sum(1 for q, d in pairs if d in truth.get(q, ()))
    total = sum(len(v) for v in truth.values())
    return {"pairs": len(pairs), "precision": right / len(pairs) if pairs else 0.0, "recall": right / total}


class Judge:
    """The pipeline's verdict for every candidate, with each document's words computed once."""

    def __init__(self, corpus: Dict[str, Dict[str, Any]], settings: fs.FailedSearchSettings) -> None:
        self.corpus, self.stemmer = corpus, settings.stemmer
        self.words: Dict[str, FrozenSet[str]] = {}

    def doc_words(self, doc_id: str):
        if doc_id not in self.words and doc_id in self.corpus:
            self.words[doc_id] = fs.content_words([passage_text(self.corpus[doc_id])], self.stemmer)[0]
        return self.words.get(doc_id)

    def kept(self, cands: Iterable[fs.Candidate], settings: fs.FailedSearchSettings, skip_shown: bool = True) -> List[Tuple[fs.Candidate, float]]:
        """(candidate, confidence) of the kept pairs; `skip_shown=False` leaves that filter out."""
        out = []
        for c in cands:
            words = self.doc_words(c.doc_id)
            coverage = None if words is None else fs.doc_coverage(c.query_words, words)
            if fs.verdict(settings, c.relatedness, c.shown and skip_shown, c.click_rank, coverage) == fs.KEPT:
                out.append((c, fs.confidence(c.relatedness, coverage, c.click_rank)))
        return out


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("TRIPLEMINER_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--json", default=None, help="also write the tables here")
    args = ap.parse_args(argv)
    scifact = Path(args.data) / "scifact"
    truth = targets(scifact)
    corpus = {d["_id"]: d for d in read_jsonl(scifact / "corpus.jsonl")}
    sessions = journeys(scifact / "query_log_journeys.train.jsonl")
    default = fs.FailedSearchSettings()
    nothing = replace(default, min_relatedness=0.0, max_click_rank=0, min_doc_coverage=0.0)
    judge = Judge(corpus, default)
    next_only, through = all_candidates(sessions, default, False), all_candidates(sessions, default, True)
    pairs_of: Callable[[Iterable[Tuple[fs.Candidate, float]]], List[Pair]] = lambda kept: [(c.query_id, c.doc_id) for c, _ in kept]
    shares = lambda cands: [(c.query_id, c.doc_id) for c in cands if c.relatedness > 0]
    rules = [
        ("naive: a click in the very next search within 120 s", [(c.query_id, c.doc_id) for c in next_only]),
        ("same, and the two queries share a content word", shares(next_only)),
        ("first later search with a click within 120 s (through failed rewordings)", [(c.query_id, c.doc_id) for c in through]),
        ("same, and the two queries share a content word", shares(through)),
        ("default filter (all four)", pairs_of(judge.kept(through, default))),
        ("default filter, very next search only", pairs_of(judge.kept(next_only, default))),
        ("default without relatedness", pairs_of(judge.kept(through, replace(default, min_relatedness=0.0)))),
        ("default without shown_in_failed_search", pairs_of(judge.kept(through, default, skip_shown=False))),
        ("default without click_rank", pairs_of(judge.kept(through, replace(default, max_click_rank=0)))),
        ("default without doc_coverage", pairs_of(judge.kept(through, replace(default, min_doc_coverage=0.0)))),
        ("relatedness + shown_in_failed_search only", pairs_of(judge.kept(through, replace(nothing, min_relatedness=default.min_relatedness)))),
    ]
    table = [{"rule": name, **measure(pairs, truth)} for name, pairs in rules]
    print(f"failed-search pairs on {scifact / 'query_log_journeys.train.jsonl'}: "
          f"{len(truth)} failed rewrites, {sum(len(v) for v in truth.values())} judged targets\n")
    print("| rule | pairs | precision | recall |\n|---|---:|---:|---:|")
    for row in table:
        print(f"| {row['rule']} | {row['pairs']} | {row['precision']:.3f} | {row['recall']:.3f} |")

    sweep = []
    for coverage in (0.0, 0.2, 0.3, 0.4, 0.5, 0.6):
        for rank in (1, 2, 3, 4, 5, 10):
            s = replace(default, min_doc_coverage=coverage, max_click_rank=rank)
            sweep.append({"min_doc_coverage": coverage, "max_click_rank": rank, **measure(pairs_of(judge.kept(through, s)), truth)})
    print("\nsweep (relatedness and shown_in_failed_search at their defaults): precision / recall (pairs)\n")
    ranks = sorted({r["max_click_rank"] for r in sweep})
    print("| min_doc_coverage \\ max_click_rank | " + " | ".join(map(str, ranks)) + " |\n|---|" + "---:|" * len(ranks))
    for coverage in sorted({r["min_doc_coverage"] for r in sweep}):
        cells = [r for r in sweep if r["min_doc_coverage"] == coverage]
        print(f"| {coverage} | " + " | ".join(f"{r['precision']:.3f} / {r['recall']:.3f} ({r['pairs']})" for r in cells) + " |")

    kept = sorted(judge.kept(through, default), key=lambda kc: (kc[1], kc[0].query_id, kc[0].doc_id))
    thirds = [kept[i * len(kept) // 3:(i + 1) * len(kept) // 3] for i in range(3)]
    by_confidence = [{"confidence": f"{part[0][1]:.2f}-{part[-1][1]:.2f}", **measure(pairs_of(part), truth)} for part in thirds if part]
    print("\nthe default's kept pairs by confidence (thirds, lowest first): precision\n")
    print("| confidence | pairs | precision |\n|---|---:|---:|")
    for row in by_confidence:
        print(f"| {row['confidence']} | {row['pairs']} | {row['precision']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rules": table, "sweep": sweep, "by_confidence": by_confidence}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
