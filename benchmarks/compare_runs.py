"""Do two mining runs hold the same rows? Prints a table: rows in each, rows only in one, rows whose
negatives differ, and negatives that changed per source (a changed ann rank shows up here).

Used to show a refactor keeps the demo's triples: mine once before and once after, then
    python benchmarks/compare_runs.py OUT_BEFORE OUT_AFTER
Exit code 0 when the rows are identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import Counter
from typing import Any, Dict, Tuple

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
    changed_rows, changed_by_source = 0, Counter()
    for key in shared:
        if json.dumps(before[key], sort_keys=True, default=str) != json.dumps(after[key], sort_keys=True, default=str):
            changed_rows += 1
            for source, _, _ in (negatives(before[key]) - negatives(after[key])).elements():
                changed_by_source[source] += 1
    return {
        "rows_before": len(before), "rows_after": len(after),
        "only_before": len(before.keys() - after.keys()), "only_after": len(after.keys() - before.keys()),
        "changed_rows": changed_rows, "changed_negatives_per_source": dict(changed_by_source),
    }


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
    print("identical rows" if same else "rows differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
