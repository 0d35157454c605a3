"""`tripleminer mine`: query log / qrels + corpus -> Parquet training triples.

    read -> positives (qrels, clicks, failed searches, [bm25 teacher]) -> candidates (impression, bm25, ann, gold, random)
         -> filter (positive-aware) -> sample (per-source counts, rank windows, caps, seeded per query)
         -> texts -> [denoise] -> write

Run `python -m tripleminer.pipelines.mine --help` for every option. Any Beam runner option works
on the same command line; the default is the local DirectRunner.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import AbstractSet, List, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tripleminer.io.readers import ReadRecords, first_record_has
from tripleminer.pipelines.driver import PipelineSpec
from tripleminer.pipelines.options import (BM25Options, CorpusOptions, CrossEncoderOptions, DenseOptions, GuardOptions, LabelOptions,
                                           MixOptions, OutputOptions)
from tripleminer.pipelines.settings import TriplesSettings, triples_settings
from tripleminer.pipelines.triples import RecordsToTriples, read_corpus
from tripleminer.schemas.mix import SOURCES, parse_mix
from tripleminer.transforms.bm25_teacher import BM25TeacherPositives, TeacherSettings
from tripleminer.transforms.click_log import AggregateClicks
from tripleminer.transforms.dedupe import DedupeById
from tripleminer.transforms.failed_search import FailedSearchPositives, FailedSearchSettings
from tripleminer.transforms.positives import SOURCE_PRIORITY, ClickPositives, QrelPositives, QueryRecords

# The default recipe: the mix and the two filters were measured together (benchmarks/quality_matrix.py:
# best on SciFact and NFCorpus under the fixed recipe); they apply together, only without --negatives.
DEFAULT_MIX = "impression:2,ann:3@10-100,gold:1,random:1"
DEFAULT_FILTERS = {"pos_aware_ratio": 0.95, "max_positive_rank": 50}
GROUPS = (CorpusOptions, LabelOptions, OutputOptions, MixOptions, BM25Options, DenseOptions, CrossEncoderOptions, GuardOptions)


@dataclass(frozen=True)
class LabelSettings:
    queries: Optional[str]
    qrels: Optional[str]
    query_log: Optional[str]
    min_clicks: int
    min_ctr: float
    qrels_min_score: float
    positives: Tuple[str, ...]  # the label sources used (--positives, or every one the inputs allow)
    failed_search: Optional[FailedSearchSettings]  # set when failed_search is among them
    teacher: Optional[TeacherSettings]  # set when bm25_teacher is among them


@dataclass(frozen=True)
class MineSettings:
    labels: LabelSettings
    triples: TriplesSettings


def default_mix(has_log: bool) -> str:
    """The default `--negatives`; without a query log, its log-based sources (impressions) drop out."""
    if has_log:
        return DEFAULT_MIX
    return ",".join(str(m) for m in parse_mix(DEFAULT_MIX) if SOURCES[m.source].origin != "log")


# The inputs each label source reads (any one of them will do).
SOURCE_INPUTS = {"qrel": ("--qrels",), "click": ("--query_log",), "failed_search": ("--query_log",),
                 "bm25_teacher": ("--queries", "--query_log")}


def positive_sources(spec: Optional[str], inputs: AbstractSet[str], log_has_sessions: bool) -> Tuple[str, ...]:
    """`--positives`, or every label source the inputs (the input options given: "--qrels", ...) allow:
    qrel with --qrels, click with a log, failed_search with a log that has user sessions, never
    bm25_teacher (it needs no labels, so by default it would give every unlabelled query teacher rows
    unasked). In `SOURCE_PRIORITY` order."""
    if spec is None:
        allowed = {"qrel": "--qrels" in inputs, "click": "--query_log" in inputs, "failed_search": log_has_sessions}
        sources = tuple(s for s in SOURCE_PRIORITY if allowed.get(s, False))
        if not sources:
            raise ValueError("need labels: pass --qrels, --query_log, or both (or --queries with --positives bm25_teacher)")
        return sources
    names = {n.strip() for n in spec.split(",") if n.strip()}
    for name in sorted(names):
        if name not in SOURCE_PRIORITY:
            raise ValueError(f"--positives: unknown source {name!r}; choose from {', '.join(SOURCE_PRIORITY)}")
        if not inputs & set(SOURCE_INPUTS[name]):
            raise ValueError(f"--positives {name} needs {' or '.join(SOURCE_INPUTS[name])}")
    if not names:
        raise ValueError("--positives names no source")
    return tuple(s for s in SOURCE_PRIORITY if s in names)


def plan(options: PipelineOptions) -> MineSettings:
    """Options -> settings; ValueError names the offending option."""
    o = options.view_as(LabelOptions)
    if o.max_positives_per_query is not None and o.max_positives_per_query < 1:
        raise ValueError("--max_positives_per_query must be >= 1")
    if not 0.0 <= o.min_click_confidence <= 1.0:
        raise ValueError("--min_click_confidence must be in [0, 1]")
    sessions = o.positives is None and bool(o.query_log) and first_record_has(o.query_log, "query_log", "user_session_id")
    given = {f"--{name}" for name in ("queries", "qrels", "query_log") if getattr(o, name)}
    sources = positive_sources(o.positives, given, sessions)
    triples = triples_settings(options, GROUPS, "log", {"negatives": default_mix(bool(o.query_log)), "positives": ",".join(sources),
                                                       **DEFAULT_FILTERS})
    failed = None
    if "failed_search" in sources:  # "content word" as the BM25 analyzer sees it
        failed = FailedSearchSettings(o.failed_search_window_s, o.failed_search_min_relatedness, o.failed_search_max_click_rank,
                                      o.failed_search_min_doc_coverage, triples.candidates.bm25.index.stemmer)
    teacher = TeacherSettings(o.bm25_teacher_k, o.bm25_teacher_queries) if "bm25_teacher" in sources else None
    labels = LabelSettings(o.queries, o.qrels, o.query_log, o.min_clicks, o.min_ctr, o.qrels_min_score, sources, failed, teacher)
    if "impression" in triples.sources and not labels.query_log:
        raise ValueError("--negatives: impression negatives need --query_log")
    triples = replace(triples, policy=replace(triples.policy, max_positives=o.max_positives_per_query,
                                                         min_click_confidence=o.min_click_confidence or None))
    return MineSettings(labels, triples)


def build(p: beam.Pipeline, s: MineSettings) -> None:
    """read -> label positives -> [teacher positives of the queries they leave without] -> query records
    -> RecordsToTriples (candidates, filter, sample, write)."""
    labels, corpus = s.labels, read_corpus(p, s.triples.corpus)
    dead: List[beam.PCollection] = []

    query_texts = p | "NoQueries" >> beam.Create([])
    if labels.queries:
        queries = p | ReadRecords("queries", labels.queries, "queries")
        unique_q = queries["records"] | DedupeById("queries", "query_id")
        dead += [queries["dead"], unique_q["dead"]]
        query_texts = unique_q["records"] | "QueryText" >> beam.Map(lambda q: (q["query_id"], q["text"]))

    positives, log_texts, pair_stats = [], p | "NoLogTexts" >> beam.Create([]), None
    if labels.query_log:
        sessions = p | ReadRecords("sessions", labels.query_log, "query_log")
        unique_s = sessions["records"] | DedupeById("sessions", "session_id")  # a replayed session would count its clicks twice
        dead += [sessions["dead"], unique_s["dead"]]
        pair_stats = unique_s["records"] | "AggregateClicks" >> AggregateClicks()
        if "click" in labels.positives:
            positives.append(pair_stats | "ClickPositives" >> ClickPositives(labels.min_clicks, labels.min_ctr))
        if labels.failed_search is not None:  # failed queries' texts are in the log only: log_texts below carry them
            positives.append(unique_s["records"] | "FailedSearchPositives" >> FailedSearchPositives(labels.failed_search, corpus.docs))
        log_texts = (
            unique_s["records"]
            | "LogQueryText" >> beam.FlatMap(lambda r: [(r["query_id"], r["query"])] if r["query"] else [])
            | "DistinctLogText" >> beam.Distinct()
        )
    if "qrel" in labels.positives:
        qrels = p | ReadRecords("qrels", labels.qrels, "qrels")
        dead.append(qrels["dead"])
        positives.append(qrels["records"] | "QrelPositives" >> QrelPositives(labels.qrels_min_score))

    if labels.teacher is not None:  # before the records: candidates and sampling then treat its positives as any others
        c = s.triples.candidates
        positives.append({
            "labels": positives | "LabelPositives" >> beam.Flatten(pipeline=p),
            "text": query_texts,
            "log_text": log_texts,
        } | "BM25TeacherPositives" >> BM25TeacherPositives(labels.teacher, c.bm25, c.work_dir, c.query_batch_size, corpus.docs, corpus.ids))

    joined = {
        "positives": positives | "AllPositives" >> beam.Flatten(),
        "text": query_texts,
        "log_text": log_texts,
    } | "QueryRecords" >> QueryRecords(corpus.ids)
    joined["records"] | "RecordsToTriples" >> RecordsToTriples(s.triples, corpus, dead + [joined["dead"]], log_pairs=pair_stats)


def describe(s: MineSettings) -> str:
    t = s.triples
    return f"{t.corpus.pattern} -> {t.output.path} (negatives {','.join(map(str, t.mix))}, seed {t.seed})"


SPEC = PipelineSpec("tripleminer mine", __doc__.split("\n")[0], GROUPS, plan, build, describe, {"negatives": DEFAULT_MIX})
run, main = SPEC.run, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
