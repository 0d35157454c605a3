"""Pairs per second of each pretext generator on SciFact: pure functions, then whole DirectRunner pipelines,
then the whole `tripleminer pretext` pipeline (pairs + negatives + texts + Parquet) with its default options.

Usage: python benchmarks/pretext_throughput.py [--docs N] [--seed S]
(the corpus is $TRIPLEMINER_DATA/scifact/corpus.jsonl, TRIPLEMINER_DATA defaulting to ../shared/data).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import List

from tripleminer.pipelines import pretext as pretext_pipeline
from tripleminer.schemas.inputs import validate_doc
from tripleminer.transforms import pretext as pt

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = "DirectRunner"
CASES = [(pt.ICT, None), (pt.CROP, None), (pt.SPAN, None), (pt.ICT, pt.AugmentConfig(sides=pt.SIDES))]


def corpus_lines(limit: int) -> List[str]:
    data = Path(os.environ.get("TRIPLEMINER_DATA", REPO_ROOT / ".." / "shared" / "data"))
    with (data / "scifact" / "corpus.jsonl").open() as f:
        return list(itertools.islice(f, limit))


def whole_pipeline(corpus: Path, tmp: Path, seed: int) -> List[pt.Throughput]:
    """`tripleminer pretext` with its default generators and negative mix: first with the BM25
    index built, then again with it cached, as a rerun would find it."""
    rows = []
    work = tmp / "work"
    for mode in ("pipeline", "pipeline, index cached"):
        argv = ["--corpus", str(corpus), "--output", str(tmp / "out"), "--work_dir", str(work),
                "--seed", str(seed), "--overwrite"]
        start = time.perf_counter()
        stats = pretext_pipeline.run(argv)
        label = "+".join(stats["positives_per_source"])
        rows.append(pt.Throughput(label, mode, stats["rows"], time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="use only the first N documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_pipeline", action="store_true", help="skip the whole `tripleminer pretext` rows")
    args = parser.parse_args()

    lines = corpus_lines(args.docs)
    docs = [validate_doc(json.loads(line)) for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(lines))
        rows = [pt.measure_throughput(source, docs, args.seed, augment=augment) for source, augment in CASES]
        rows += [pt.measure_beam_throughput(source, str(corpus), args.seed, augment=augment, runner=RUNNER)
                 for source, augment in CASES]
        if not args.skip_pipeline:
            rows += whole_pipeline(corpus, Path(tmp), args.seed)

    print(f"{len(docs)} SciFact documents, default configs (1 pair per document), seed {args.seed}")
    print(f"pipeline rows: `tripleminer pretext` defaults ({pretext_pipeline.DEFAULT_GENERATORS}; negatives "
          f"{pretext_pipeline.DEFAULT_MIX}), read to Parquet, start-up included")
    print(f"{'generator':<14} {'mode':<22} {'pairs':>7} {'seconds':>8} {'pairs/s':>9}")
    for row in rows:
        print(f"{row.source:<14} {row.mode:<22} {row.pairs:>7} {row.seconds:>8.2f} {row.pairs_per_second:>9,.0f}")


if __name__ == "__main__":
    main()
