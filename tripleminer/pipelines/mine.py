"""`tripleminer mine`: query log / qrels + corpus -> Parquet training triples.

    read -> positives (clicks, qrels) -> candidates (impression, bm25, gold, random)
         -> sample (per-source counts and rank windows, seeded per query) -> texts -> write

Run `python -m tripleminer.pipelines.mine --help` for every option. Any Beam runner option works
on the same command line; the default is the local DirectRunner.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, List, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

import tripleminer
from tripleminer.index.bm25 import BM25Settings
from tripleminer.io.readers import ReadRecords
from tripleminer.io.writers import WriteDeadLetters, WriteTriples, prepare_output, write_stats
from tripleminer.pipelines.options import MineOptions, parse_options
from tripleminer.pipelines.stats import summarize
from tripleminer.transforms.click_log import AggregateClicks
from tripleminer.transforms.dedupe import DedupeById
from tripleminer.transforms.negatives import GoldNegatives, ImpressionNegatives, RandomNegatives
from tripleminer.transforms.positives import ClickPositives, QrelPositives, QueryRecords
from tripleminer.transforms.retrieval import BM25Negatives, BuildBM25Index
from tripleminer.transforms.sample import SampleNegatives, SourceMix, parse_mix
from tripleminer.transforms.texts import AttachTexts

log = logging.getLogger(__name__)
SOURCES = ("impression", "bm25", "gold", "random")


def run_config(o: MineOptions) -> Dict[str, Any]:
    """The options that decide the output, recorded in every shard and in stats.json."""
    ours = {k: v for k, v in o.get_all_options().items() if k in _OUR_OPTIONS and k != "overwrite"}
    return {"tripleminer_version": tripleminer.__version__, **dict(sorted(ours.items()))}


def _our_option_names() -> List[str]:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    MineOptions._add_argparse_args(parser)
    return [a.dest for a in parser._actions]


_OUR_OPTIONS = set(_our_option_names())


def validate(o: MineOptions, mix: List[SourceMix]) -> None:
    """Configuration errors, before any work starts."""
    if not (o.qrels or o.query_log):
        raise ValueError("need labels: pass --qrels, --query_log, or both")
    for m in mix:
        if m.source not in SOURCES:
            raise ValueError(f"--negatives: unknown source {m.source!r}; this pipeline offers {', '.join(SOURCES)}")
        if m.source == "impression" and not o.query_log:
            raise ValueError("--negatives: impression negatives need --query_log")
        if m.rank_start is not None and m.source in ("gold", "random"):
            raise ValueError(f"--negatives: {m.source} is unranked, so it takes no rank window")
    if o.output_format == "n-tuple" and (o.ntuple_negatives or sum(m.count for m in mix)) < 1:
        raise ValueError("--output_format n-tuple needs at least one negative per row")


def build(p: beam.Pipeline, o: MineOptions) -> None:
    """Wire the mine pipeline onto `p`."""
    mix = parse_mix(o.negatives)
    validate(o, mix)
    dead: List[beam.PCollection] = []

    # read
    corpus = p | ReadRecords("corpus", o.corpus, "corpus")
    unique = corpus["records"] | DedupeById("corpus", "doc_id")
    docs = unique["records"]
    dead += [corpus["dead"], unique["dead"]]
    corpus_ids = beam.pvalue.AsSingleton(
        docs | "DocIds" >> beam.Map(lambda d: d["doc_id"]) | "AllDocIds" >> beam.combiners.ToList()
    )

    query_texts = p | "NoQueries" >> beam.Create([])
    if o.queries:
        queries = p | ReadRecords("queries", o.queries, "queries")
        unique_q = queries["records"] | DedupeById("queries", "query_id")
        dead += [queries["dead"], unique_q["dead"]]
        query_texts = unique_q["records"] | "QueryText" >> beam.Map(lambda q: (q["query_id"], q["text"]))

    # positives
    positives, log_texts, pair_stats = [], p | "NoLogTexts" >> beam.Create([]), None
    if o.query_log:
        sessions = p | ReadRecords("sessions", o.query_log, "query_log")
        dead.append(sessions["dead"])
        pair_stats = sessions["records"] | "AggregateClicks" >> AggregateClicks()
        positives.append(pair_stats | "ClickPositives" >> ClickPositives(o.min_clicks, o.min_ctr))
        log_texts = (
            sessions["records"]
            | "LogQueryText" >> beam.FlatMap(lambda s: [(s["query_id"], s["query"])] if s["query"] else [])
            | "DistinctLogText" >> beam.Distinct()
        )
    if o.qrels:
        qrels = p | ReadRecords("qrels", o.qrels, "qrels")
        dead.append(qrels["dead"])
        positives.append(qrels["records"] | "QrelPositives" >> QrelPositives(o.qrels_min_score))
    joined = {
        "positives": positives | "AllPositives" >> beam.Flatten(),
        "text": query_texts,
        "log_text": log_texts,
    } | "QueryRecords" >> QueryRecords(corpus_ids)
    records = joined["records"]
    dead.append(joined["dead"])

    # candidates
    per_source = {m.source: m for m in mix}
    candidate_lists = []
    if "impression" in per_source:
        candidate_lists.append(pair_stats | "ImpressionNegatives" >> ImpressionNegatives(corpus_ids))
    if "bm25" in per_source:
        settings = BM25Settings(o.bm25_backend, o.bm25_k1, o.bm25_b, o.bm25_stemmer)
        depth = o.bm25_depth or per_source["bm25"].rank_end or 100
        index_dir = docs | "BuildBM25Index" >> BuildBM25Index(settings, o.work_dir)
        candidate_lists.append(records | "BM25Negatives" >> BM25Negatives(index_dir, depth, o.query_batch_size))
    if "gold" in per_source:
        candidate_lists.append(records | "GoldNegatives" >> GoldNegatives(per_source["gold"].count, o.seed))
    if "random" in per_source:
        candidate_lists.append(records | "RandomNegatives" >> RandomNegatives(corpus_ids, per_source["random"].count, o.seed))
    all_candidates = candidate_lists | "AllCandidates" >> beam.Flatten() if candidate_lists else p | "NoCandidates" >> beam.Create([])

    # sample -> texts -> write
    rows = (records, all_candidates) | "SampleNegatives" >> SampleNegatives(o.seed, mix)
    rows = rows | "AttachTexts" >> AttachTexts(docs)
    ntuple = o.ntuple_negatives or sum(m.count for m in mix)
    rows | "WriteTriples" >> WriteTriples(o.output, o.output_format, run_config(o), o.num_shards, ntuple)
    (
        dead
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.Map(_count_dead)
        | "WriteDeadLetters" >> WriteDeadLetters(o.output)
    )


def _count_dead(d: Dict[str, str]) -> Dict[str, str]:
    Metrics.counter("dead_letter", d["input"]).inc()
    return d


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the mine pipeline and return its stats (also written to OUTPUT/stats.json)."""
    _, options = parse_options([MineOptions], argv, "tripleminer mine", __doc__.split("\n")[0])
    o = options.view_as(MineOptions)
    prepare_output(o.output, o.overwrite)
    start = time.perf_counter()
    log.info("mining %s -> %s (negatives %s, seed %d)", o.corpus, o.output, o.negatives, o.seed)
    p = beam.Pipeline(options=options)
    build(p, o)
    result = p.run()
    result.wait_until_finish()
    stats = summarize(result, run_config(o), time.perf_counter() - start)
    path = write_stats(o.output, stats)
    log.info(
        "wrote %d rows (negatives per source %s) in %.1fs; stats in %s",
        stats["rows"], stats["negatives_per_source"], stats["wall_time_s"], path,
    )
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
