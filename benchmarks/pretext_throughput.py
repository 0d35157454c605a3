"""Pairs per second of each pretext generator on SciFact: pure functions, then whole DirectRunner pipelines,
then the whole `tripleminer pretext` pipeline (pairs + negatives + texts + Parquet) with its default options,
and with each of title, salient and neighbors alone.

The dense salient scorer runs the bi-encoder on every candidate span, so its rows use only the first
--dense_docs documents (0 skips them).

Usage: python benchmarks/pretext_throughput.py [--docs N] [--dense_docs N] [--seed S] [--skip_pipeline]
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
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import apache_beam as beam

from tripleminer.encoders import Encoder
from tripleminer.pipelines import pretext as pretext_pipeline
from tripleminer.schemas.inputs import validate_doc
from tripleminer.transforms import pretext as pt

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = "DirectRunner"
BENCHMARK_VOCABULARY_SIZE = 10_000


class Case(NamedTuple):
    """One generator setting to time; `config` None is the generator's default."""

    label: str
    source: str
    config: Optional[Any] = None
    augment: Optional[pt.AugmentConfig] = None


CASES = [Case(pt.ICT, pt.ICT), Case(pt.CROP, pt.CROP), Case(pt.SPAN, pt.SPAN),
         Case(f"{pt.ICT}+{pt.AUGMENT}", pt.ICT, augment=pt.AugmentConfig(sides=pt.SIDES)),
         Case(pt.TITLE, pt.TITLE), Case(f"{pt.SALIENT}/bm25", pt.SALIENT), Case(pt.NEIGHBORS, pt.NEIGHBORS)]
DENSE_CASE = Case(f"{pt.SALIENT}/dense", pt.SALIENT, pt.SalientConfig(scorer="dense"))
# the generators timed alone in the whole pipeline; same_doc negatives come with span pairs only
SINGLE_GENERATORS = (pt.TITLE, pt.SALIENT, pt.NEIGHBORS)
SINGLE_MIX = "bm25:2@1-50,random:1"


@dataclass(frozen=True)
class Throughput:
    """One row of the table: how many pairs a run made, and how long it took."""

    source: str  # the case's label: a generator, "<generator>+augment" or "salient/<scorer>"; or the pipeline's generators
    mode: str  # "pure" or the Beam runner's name
    pairs: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("inf")


def scorer_arguments(source: str, config: Any, docs: Sequence[pt.Doc]) -> Dict[str, Any]:
    """What salient's pure function takes beyond (doc, seed, config): its scorer, as its transform builds
    it (BM25 over the corpus statistics of `docs`, or the loaded bi-encoder); nothing for the others."""
    if source != pt.SALIENT:
        return {}
    if config.scorer == "dense":
        return {"salience": pt.DenseSalience(Encoder(config.encoder_settings()))}
    return {"salience": pt.Bm25Salience(pt.term_stats(docs, config.bm25.stemmer), config.bm25)}


def measure_throughput(case: Case, docs: Sequence[pt.Doc], seed: int = 0) -> Throughput:
    """Pairs per second of a generator's pure function over `docs`, optionally followed by augmentation
    (the vocabulary sample, salient's corpus statistics or model are made before the clock starts)."""
    gen = pt.GENERATORS[case.source]
    config = case.config if case.config is not None else gen.config()
    vocabulary = pt.vocabulary_sample(docs, BENCHMARK_VOCABULARY_SIZE, seed) if case.augment else []
    scorer = scorer_arguments(case.source, config, docs)
    start = time.perf_counter()
    pairs = [pair for doc in docs for pair in gen.pairs(doc, seed, config, **scorer)]
    if case.augment:
        pairs = [pt.augment_pair(pair, seed, vocabulary, case.augment) for pair in pairs]
    return Throughput(case.label, "pure", len(pairs), time.perf_counter() - start)


def measure_beam_throughput(case: Case, corpus_jsonl: str, seed: int = 0, runner: str = RUNNER) -> Throughput:
    """Pairs per second of a generator's transform in a whole Beam pipeline reading a BEIR corpus file.

    Pipeline start-up, reading and parsing are included, as a user would see them; the corpus is read
    from a file because `beam.Create` of thousands of documents would mostly time their pickling.
    """
    pipeline = beam.Pipeline(runner=runner)
    docs = (pipeline | "Read" >> beam.io.ReadFromText(corpus_jsonl) | "Parse" >> beam.Map(json.loads)
            | "Validate" >> beam.Map(validate_doc))
    pairs = docs | case.source >> pt.GENERATORS[case.source].transform(seed, case.config)
    if case.augment:
        vocabulary = docs | "Vocabulary" >> pt.SampleVocabulary(BENCHMARK_VOCABULARY_SIZE, seed)
        _ = pairs | "Augment" >> pt.AugmentPairs(vocabulary, seed, case.augment)
    start = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    return Throughput(case.label, runner, pt.counter_value(result, case.source, "pairs"), seconds)


def corpus_lines(limit: int) -> List[str]:
    data = Path(os.environ.get("TRIPLEMINER_DATA", REPO_ROOT / ".." / "shared" / "data"))
    with (data / "scifact" / "corpus.jsonl").open() as f:
        return list(itertools.islice(f, limit))


def whole_pipeline(corpus: Path, tmp: Path, seed: int) -> List[Throughput]:
    """`tripleminer pretext` with its default generators and negative mix: first with the BM25
    index built, then again with it cached, as a rerun would find it; then each of `SINGLE_GENERATORS`
    alone at rate 1 (index cached) with `SINGLE_MIX`."""
    rows = []
    work = tmp / "work"
    runs = [([], "pipeline"), ([], "pipeline, index cached")]
    runs += [(["--generators", f"{name}:1", "--negatives", SINGLE_MIX], "pipeline, index cached")
             for name in SINGLE_GENERATORS]
    for extra, mode in runs:
        argv = ["--corpus", str(corpus), "--output", str(tmp / "out"), "--work_dir", str(work),
                "--seed", str(seed), "--overwrite", *extra]
        start = time.perf_counter()
        stats = pretext_pipeline.run(argv)
        label = "+".join(stats["positives_per_source"])
        rows.append(Throughput(label, mode, stats["rows"], time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="use only the first N documents")
    parser.add_argument("--dense_docs", type=int, default=20,
                        help="documents for the dense salient scorer's rows (0: skip them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_pipeline", action="store_true", help="skip the whole `tripleminer pretext` rows")
    args = parser.parse_args()

    lines = corpus_lines(args.docs)
    docs = [validate_doc(json.loads(line)) for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(lines))
        rows = [measure_throughput(case, docs, args.seed) for case in CASES]
        rows += [measure_beam_throughput(case, str(corpus), args.seed, runner=RUNNER) for case in CASES]
        if args.dense_docs:
            dense_corpus = Path(tmp) / "dense_corpus.jsonl"
            dense_corpus.write_text("".join(lines[: args.dense_docs]))
            rows += [measure_throughput(DENSE_CASE, docs[: args.dense_docs], args.seed),
                     measure_beam_throughput(DENSE_CASE, str(dense_corpus), args.seed, runner=RUNNER)]
        if not args.skip_pipeline:
            rows += whole_pipeline(corpus, Path(tmp), args.seed)

    print(f"{len(docs)} SciFact documents, default configs (1 pair per document), seed {args.seed}")
    print(f"{DENSE_CASE.label} rows: the first {min(args.dense_docs, len(docs))} documents")
    print(f"pipeline rows: `tripleminer pretext` defaults ({pretext_pipeline.DEFAULT_GENERATORS}; negatives "
          f"{pretext_pipeline.DEFAULT_MIX}), then {', '.join(SINGLE_GENERATORS)} alone (negatives {SINGLE_MIX}), "
          "read to Parquet, start-up included")
    print(f"{'generator':<15} {'mode':<22} {'pairs':>7} {'seconds':>8} {'pairs/s':>9}")
    for row in rows:
        print(f"{row.source:<15} {row.mode:<22} {row.pairs:>7} {row.seconds:>8.2f} {row.pairs_per_second:>9,.1f}")


if __name__ == "__main__":
    main()
