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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import apache_beam as beam

from tripleminer.pipelines import pretext as pretext_pipeline
from tripleminer.schemas.inputs import validate_doc
from tripleminer.transforms import pretext as pt

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = "DirectRunner"
CASES = [(pt.ICT, None), (pt.CROP, None), (pt.SPAN, None), (pt.ICT, pt.AugmentConfig(sides=pt.SIDES))]
BENCHMARK_VOCABULARY_SIZE = 10_000


@dataclass(frozen=True)
class Throughput:
    """One row of the table: how many pairs a run made, and how long it took."""

    source: str  # a generator, or "<generator>+augment"
    mode: str  # "pure" or the Beam runner's name
    pairs: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("inf")


def _label(source: str, augment: Optional[pt.AugmentConfig]) -> str:
    return f"{source}+{pt.AUGMENT}" if augment else source


def measure_throughput(source: str, docs: Sequence[pt.Doc], seed: int = 0, config: Optional[Any] = None,
                       augment: Optional[pt.AugmentConfig] = None) -> Throughput:
    """Pairs per second of a generator's pure function over `docs`, optionally followed by augmentation
    (the vocabulary sample is drawn before the clock starts)."""
    gen = pt.GENERATORS[source]
    config = config if config is not None else gen.config()
    vocabulary = pt.vocabulary_sample(docs, BENCHMARK_VOCABULARY_SIZE, seed) if augment else []
    start = time.perf_counter()
    pairs = [pair for doc in docs for pair in gen.pairs(doc, seed, config)]
    if augment:
        pairs = [pt.augment_pair(pair, seed, vocabulary, augment) for pair in pairs]
    return Throughput(_label(source, augment), "pure", len(pairs), time.perf_counter() - start)


def measure_beam_throughput(source: str, corpus_jsonl: str, seed: int = 0, config: Optional[Any] = None,
                            augment: Optional[pt.AugmentConfig] = None, runner: str = RUNNER) -> Throughput:
    """Pairs per second of a generator's transform in a whole Beam pipeline reading a BEIR corpus file.

    Pipeline start-up, reading and parsing are included, as a user would see them; the corpus is read
    from a file because `beam.Create` of thousands of documents would mostly time their pickling.
    """
    pipeline = beam.Pipeline(runner=runner)
    docs = (pipeline | "Read" >> beam.io.ReadFromText(corpus_jsonl) | "Parse" >> beam.Map(json.loads)
            | "Validate" >> beam.Map(validate_doc))
    pairs = docs | source >> pt.GENERATORS[source].transform(seed, config)
    if augment:
        vocabulary = docs | "Vocabulary" >> pt.SampleVocabulary(BENCHMARK_VOCABULARY_SIZE, seed)
        _ = pairs | "Augment" >> pt.AugmentPairs(vocabulary, seed, augment)
    start = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    return Throughput(_label(source, augment), runner, pt.counter_value(result, source, "pairs"), seconds)


def corpus_lines(limit: int) -> List[str]:
    data = Path(os.environ.get("TRIPLEMINER_DATA", REPO_ROOT / ".." / "shared" / "data"))
    with (data / "scifact" / "corpus.jsonl").open() as f:
        return list(itertools.islice(f, limit))


def whole_pipeline(corpus: Path, tmp: Path, seed: int) -> List[Throughput]:
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
        rows.append(Throughput(label, mode, stats["rows"], time.perf_counter() - start))
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
        rows = [measure_throughput(source, docs, args.seed, augment=augment) for source, augment in CASES]
        rows += [measure_beam_throughput(source, str(corpus), args.seed, augment=augment, runner=RUNNER)
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
