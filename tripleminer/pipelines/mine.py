"""`tripleminer mine`: query log / qrels + corpus -> Parquet training triples.

    read -> positives (clicks, qrels) -> candidates (impression, bm25, ann, gold, random)
         -> filter (positive-aware) -> sample (per-source counts, rank windows, caps, seeded per query)
         -> texts -> write

Run `python -m tripleminer.pipelines.mine --help` for every option. Any Beam runner option works
on the same command line; the default is the local DirectRunner.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Dict, List, Optional

import apache_beam as beam

from tripleminer.logs import setup_logging
from tripleminer.io.readers import ReadRecords
from tripleminer.pipelines import common
from tripleminer.pipelines.options import MineOptions, parse_options
from tripleminer.transforms.click_log import AggregateClicks
from tripleminer.transforms.dedupe import DedupeById
from tripleminer.transforms.negatives import ImpressionNegatives
from tripleminer.transforms.positives import ClickPositives, QrelPositives, QueryRecords
from tripleminer.schemas.mix import SourceMix, parse_mix
from tripleminer.transforms.texts import AttachTexts

log = logging.getLogger(__name__)
SOURCES = ("impression",) + common.CORPUS_SOURCES


def run_config(o: MineOptions) -> Dict[str, Any]:
    """The options that decide the output, recorded in every shard and in stats.json."""
    return common.run_config(o, MineOptions)


def validate(o: MineOptions, mix: List[SourceMix]) -> None:
    """Configuration errors, before any work starts."""
    if not (o.qrels or o.query_log):
        raise ValueError("need labels: pass --qrels, --query_log, or both")
    common.validate_mix(mix, SOURCES)
    common.mix_policy(o, mix)
    if any(m.source == "impression" for m in mix) and not o.query_log:
        raise ValueError("--negatives: impression negatives need --query_log")
    if o.output_format == "n-tuple" and (o.ntuple_negatives or sum(m.count for m in mix)) < 1:
        raise ValueError("--output_format n-tuple needs at least one negative per row")


def build(p: beam.Pipeline, o: MineOptions) -> None:
    """Wire the mine pipeline onto `p`."""
    mix = parse_mix(o.negatives)
    validate(o, mix)
    dead: List[beam.PCollection] = []

    # read
    docs, corpus_ids, corpus_dead = common.read_corpus(p, o.corpus, o.max_doc_chars)
    dead += corpus_dead

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
        unique_s = sessions["records"] | DedupeById("sessions", "session_id")  # a replayed session would count its clicks twice
        dead += [sessions["dead"], unique_s["dead"]]
        pair_stats = unique_s["records"] | "AggregateClicks" >> AggregateClicks()
        positives.append(pair_stats | "ClickPositives" >> ClickPositives(o.min_clicks, o.min_ctr))
        log_texts = (
            unique_s["records"]
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
    corpus_lists, dense = common.corpus_negatives(records, docs, corpus_ids, per_source, o)  # bm25, ann, gold, random
    candidate_lists += corpus_lists

    # filter -> sample -> texts -> write
    rows = common.sample_rows(p, records, candidate_lists, mix, o, dense)
    rows = rows | "AttachTexts" >> AttachTexts(docs)
    rows = common.denoise(rows, o)
    common.write_outputs(rows, dead, o, mix, run_config(o))


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the mine pipeline and return its stats (also written to OUTPUT/stats.json)."""
    _, options = parse_options([MineOptions], argv, "tripleminer mine", __doc__.split("\n")[0])
    o = options.view_as(MineOptions)
    log.info("mining %s -> %s (negatives %s, seed %d)", o.corpus, o.output, o.negatives, o.seed)
    return common.execute(options, o.output, o.overwrite, lambda p: build(p, o), run_config(o))


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
