"""Do two mining runs hold the same rows? Prints a table: rows in each, rows only in one, rows whose
negatives differ, and negatives that changed per source (a changed ann rank shows up here).

Used to show a refactor keeps the demo's triples: mine once before and once after, then
    python benchmarks/compare_runs.py OUT_BEFORE OUT_AFTER
Exit code 0 when the triples are the same (same rows, same documents, sources and ranks; float scores may
differ in their last bits when embeddings were recomputed with other batches), 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import Counter
from typing import Any, Dict, Optional, Tuple

import pyarrow.parquet as pq

Key = Tuple[str, str]


def load_rows(out_dir: str) -> Dict[Key, Dict[str, Any]]:
    """Nested rows keyed by (query id, positive doc id)."""
    files = sorted(glob.glob(os.path.join(out_dir, "triples-*.parquet")))
    if not files:
        raise SystemExit(f"{out_dir}: no triples-*.parquet shards")
    rows = {}
    for path in files:
        for row in pq.read_table(path).to_pylist():
            rows[(row["query_id"], row["positive"]["doc_id"])] = row
    return rows


def negatives(row: Dict[str, Any]) -> Counter:
    return Counter((n["source"], n["doc_id"], n["rank"]) for n in row["negatives"])


def compare(before_dir: str, after_dir: str) -> Dict[str, Any]:
    before, after = load_rows(before_dir), load_rows(after_dir)
    shared = before.keys() & after.keys()
    changed_rows, score_only_rows, max_score_diff, changed_by_source = 0, 0, 0.0, Counter()
    for key in shared:
        if _text(before[key]) == _text(after[key]):
            continue
        changed_rows += 1
        moved = negatives(before[key]) - negatives(after[key])
        for source, _, _ in moved.elements():
            changed_by_source[source] += 1
        diff = _score_diff(before[key], after[key])
        if diff is not None and not moved:
            score_only_rows += 1
            max_score_diff = max(max_score_diff, diff)
    return {
        "rows_before": len(before), "rows_after": len(after),
        "only_before": len(before.keys() - after.keys()), "only_after": len(after.keys() - before.keys()),
        "changed_rows": changed_rows, "rows_differing_only_in_float_scores": score_only_rows,
        "max_abs_score_difference_there": f"{max_score_diff:.2e}", "changed_negatives_per_source": dict(changed_by_source),
    }


def _text(row: Dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _score_diff(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[float]:
    """Largest |score difference| when the rows are equal but for float scores, else None."""
    def strip(row: Dict[str, Any]) -> Dict[str, Any]:
        return {**row, "positive": {**row["positive"], "score": None},
                "negatives": [{**n, "score": None, "ce_score": None} for n in row["negatives"]]}
    if _text(strip(a)) != _text(strip(b)):
        return None
    pairs = [(a["positive"]["score"], b["positive"]["score"])]
    pairs += [(x["score"], y["score"]) for x, y in zip(a["negatives"], b["negatives"])]
    return max((abs(x - y) for x, y in pairs if x is not None and y is not None), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="output folder of the first run")
    parser.add_argument("after", help="output folder of the second run")
    args = parser.parse_args()
    result = compare(args.before, args.after)
    print("| measure | value |\n|---|---:|")
    for name, value in result.items():
        print(f"| {name} | {value} |")
    same = not (result["only_before"] or result["only_after"] or result["changed_rows"])
    same_triples = same or (not (result["only_before"] or result["only_after"])
                            and result["changed_rows"] == result["rows_differing_only_in_float_scores"])
    print("identical rows" if same else "same triples; float scores differ in their last bits" if same_triples else "rows differ")
    return 0 if same_triples else 1


if __name__ == "__main__":
    sys.exit(main())
