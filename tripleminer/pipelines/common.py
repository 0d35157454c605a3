"""What every triples pipeline shares: reading the corpus, the corpus-based negative sources,
writing the outputs, the recorded run configuration, and running one pipeline to its stats.

`mine` (labelled queries) and `pretext` (self-supervised pairs) differ only in where their query
records come from; from the records on they wire the same transforms through these helpers, with
the same transform labels, so a stage has one name in both pipelines' metrics and monitoring.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Tuple, Type

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

import tripleminer
from tripleminer.encoders import EncoderSettings, default_model
from tripleminer.index.bm25 import BM25Settings
from tripleminer.index.dense import AnnSettings
from tripleminer.io.readers import ReadRecords
from tripleminer.io.writers import CE_REPORT_PREFIX, WriteDeadLetters, WriteTriples, prepare_output, write_stats
from tripleminer.pipelines.stats import summarize
from tripleminer.schemas.inputs import DEFAULT_MAX_DOC_CHARS
from tripleminer.transforms.dedupe import DedupeById
from tripleminer.transforms.negatives import GoldNegatives, RandomNegatives
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.crossencoder import CrossEncoderDenoise, DenoiseSettings
from tripleminer.transforms.embed import EmbedWithCache
from tripleminer.transforms.retrieval import (BM25Negatives, BuildAnnShards, BuildBM25Shards, PositiveScores,
                                               ShardedSearch)
from tripleminer.transforms.sample import MixPolicy, SampleNegatives, SourceMix

log = logging.getLogger(__name__)

# Negative sources drawn from the corpus alone, offered by every pipeline (see `corpus_negatives`).
CORPUS_SOURCES = ("bm25", "ann", "gold", "random")


# --------------------------------------------------------------------------------------------
# Run configuration
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def option_names(options_class: Type[PipelineOptions]) -> FrozenSet[str]:
    """The dests a pipeline's own options class declares (Beam's and the runner's are left out)."""
    parser = argparse.ArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)
    return frozenset(a.dest for a in parser._actions)


def run_config(o: PipelineOptions, options_class: Type[PipelineOptions]) -> Dict[str, Any]:
    """The options that decide the output, recorded in every shard and in stats.json."""
    names = option_names(options_class)
    ours = {k: v for k, v in o.get_all_options().items() if k in names and k != "overwrite"}
    return {"tripleminer_version": tripleminer.__version__, **dict(sorted(ours.items()))}


# --------------------------------------------------------------------------------------------
# Pipeline pieces
# --------------------------------------------------------------------------------------------


class Corpus(NamedTuple):
    docs: beam.PCollection  # validated, deduplicated {doc_id, title, text}
    ids: beam.pvalue.AsSingleton  # every doc id, as one list (for sampling and membership)
    dead: List[beam.PCollection]  # dead letters of reading and deduplication


def read_corpus(p: beam.Pipeline, pattern: str, max_doc_chars: Optional[int] = DEFAULT_MAX_DOC_CHARS) -> Corpus:
    """Read, validate and deduplicate the corpus (`--corpus`); larger documents than `--max_doc_chars` are dead letters."""
    corpus = p | ReadRecords("corpus", pattern, "corpus", max_doc_chars)
    unique = corpus["records"] | DedupeById("corpus", "doc_id")
    docs = unique["records"]
    ids = beam.pvalue.AsSingleton(
        docs | "DocIds" >> beam.Map(lambda d: d["doc_id"]) | "AllDocIds" >> beam.combiners.ToList()
    )
    return Corpus(docs, ids, [corpus["dead"], unique["dead"]])


class Dense(NamedTuple):
    """Unit vectors of the corpus and of the queries, from one encoder (ann source, positive-aware filter)."""

    key: str  # identifies the encoder's vectors (index folders are named after it)
    docs: beam.PCollection  # (doc_id, vector)
    queries: beam.PCollection  # (query_id, vector)


def encoder_settings(o: PipelineOptions) -> EncoderSettings:
    return EncoderSettings(o.model or default_model(), o.max_seq_length, o.embed_backend, o.device, o.encode_batch_size)


def embed(records: beam.PCollection, docs: beam.PCollection, o: PipelineOptions) -> Dense:
    """Embed corpus and queries (through the embedding cache under `--work_dir`)."""
    settings = encoder_settings(o)
    batches = {"min_batch_size": o.embed_min_batch_size, "max_batch_size": o.embed_max_batch_size}
    doc_vectors = (
        docs
        | "DocTexts" >> beam.Map(lambda d: (d["doc_id"], passage_text(d)))
        | "EmbedDocs" >> EmbedWithCache(settings, "doc", o.work_dir, **batches)
    )
    query_vectors = (
        records
        | "QueryTexts" >> beam.Map(lambda r: (r["query_id"], r["query"]))
        | "EmbedQueries" >> EmbedWithCache(settings, "query", o.work_dir, **batches)
    )
    return Dense(settings.key(), doc_vectors, query_vectors)


def corpus_negatives(
    records: beam.PCollection, docs: beam.PCollection, corpus_ids: beam.pvalue.AsSingleton,
    per_source: Mapping[str, SourceMix], o: PipelineOptions,
) -> Tuple[List[beam.PCollection], Optional[Dense]]:
    """The candidate lists of the corpus-only sources the mix names: bm25, ann, gold, random,
    and the dense vectors when ann needed them (for the positive-aware filter).

    Each list emits `(query_id, candidates)`; the query's positives are excluded by the sampler.
    """
    lists, dense = [], None
    if "bm25" in per_source:
        settings = BM25Settings(o.bm25_backend, o.bm25_k1, o.bm25_b, o.bm25_stemmer)
        depth = o.bm25_depth or per_source["bm25"].rank_end or 100
        shards = docs | "BuildBM25Shards" >> BuildBM25Shards(settings, o.bm25_shards, o.work_dir)
        lists.append(records | "BM25Negatives" >> BM25Negatives(shards, o.bm25_shards, depth, o.query_batch_size))
    if "ann" in per_source:
        dense = embed(records, docs, o)
        ann = AnnSettings(o.ann_index, o.ann_nprobe, o.ann_ef_search)
        depth = o.ann_depth or per_source["ann"].rank_end or 500
        shards = dense.docs | "BuildAnnShards" >> BuildAnnShards(ann, o.ann_shards, o.work_dir, dense.key)
        lists.append(dense.queries | "AnnNegatives" >> ShardedSearch("ann", shards, o.ann_shards, depth, o.query_batch_size))
    if "gold" in per_source:
        lists.append(records | "GoldNegatives" >> GoldNegatives(per_source["gold"].count, o.seed))
    if "random" in per_source:
        lists.append(records | "RandomNegatives" >> RandomNegatives(corpus_ids, per_source["random"].count, o.seed))
    return lists, dense


RANKED_SOURCES = ("impression", "bm25", "ann")


def validate_mix(mix: List[SourceMix], offered: Tuple[str, ...]) -> None:
    """Configuration errors of `--negatives` that every pipeline checks the same way."""
    for m in mix:
        if m.source not in offered:
            raise ValueError(f"--negatives: unknown source {m.source!r}; this pipeline offers {', '.join(offered)}")
        if m.rank_start is not None and m.source not in RANKED_SOURCES:
            raise ValueError(f"--negatives: {m.source} is unranked, so it takes no rank window")


def mix_policy(o: PipelineOptions, mix: List[SourceMix]) -> MixPolicy:
    """The cross-source caps and filters; the positive-aware filter needs ann's dense scores."""
    policy = MixPolicy(o.max_hard_negatives, o.easy_per_hard, o.pos_aware_ratio, o.pos_aware_margin)
    if (policy.max_score_ratio is not None or policy.min_margin is not None) and "ann" not in {m.source for m in mix}:
        raise ValueError("--pos_aware_ratio/--pos_aware_margin filter dense candidates: add ann to --negatives")
    return policy


def sample_rows(
    p: beam.Pipeline, records: beam.PCollection, candidate_lists: List[beam.PCollection], mix: List[SourceMix],
    o: PipelineOptions, dense: Optional[Dense],
) -> beam.PCollection:
    """Candidates -> filter -> sample: one row per (query, positive), doc ids only (texts come next)."""
    policy = mix_policy(o, mix)
    candidates = (
        candidate_lists | "AllCandidates" >> beam.Flatten() if candidate_lists
        else p | "NoCandidates" >> beam.Create([])
    )
    # The positives' dense scores feed the positive-aware filter and are kept in the rows.
    positive_scores = None if dense is None else records | "PositiveScores" >> PositiveScores(dense.queries, dense.docs)
    return (records, candidates) | "SampleNegatives" >> SampleNegatives(o.seed, mix, policy, positive_scores)


def denoise(rows: beam.PCollection, o: PipelineOptions) -> beam.PCollection:
    """Rows with texts -> rows whose negatives a cross-encoder judged confidently irrelevant
    (`--cross_encoder`); the dropped ones are written to `OUTPUT/ce_flagged-*.jsonl`."""
    if not o.cross_encoder:
        return rows
    settings = DenoiseSettings(o.cross_encoder, o.ce_drop_threshold, o.ce_augment, o.ce_positive_threshold,
                               o.ce_negative_threshold, o.ce_augment_max_labels, o.ce_batch_pairs,
                               max_length=o.ce_max_length, device=o.device)
    out = rows | "CrossEncoderDenoise" >> CrossEncoderDenoise(settings, o.work_dir)
    out["report"] | "WriteCeFlagged" >> WriteDeadLetters(o.output, CE_REPORT_PREFIX)
    return out["rows"]


def ntuple_size(o: PipelineOptions, mix: List[SourceMix]) -> int:
    """N of the n-tuple layout: `--ntuple_negatives`, or the total count of the mix."""
    return o.ntuple_negatives or sum(m.count for m in mix)


def write_outputs(
    rows: beam.PCollection, dead: List[beam.PCollection], o: PipelineOptions, mix: List[SourceMix],
    config: Dict[str, Any],
) -> None:
    """Rows with texts -> Parquet shards under `--output` in `--output_format`; dead letters beside them."""
    rows | "WriteTriples" >> WriteTriples(o.output, o.output_format, config, o.num_shards, ntuple_size(o, mix))
    (
        dead
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.Map(_count_dead)
        | "WriteDeadLetters" >> WriteDeadLetters(o.output)
    )


def _count_dead(d: Dict[str, str]) -> Dict[str, str]:
    Metrics.counter("dead_letter", d["input"]).inc()
    return d


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

Summarizer = Callable[[PipelineResult, Dict[str, Any], float], Dict[str, Any]]


def execute(
    options: PipelineOptions, output: str, overwrite: bool, build: Callable[[beam.Pipeline], None],
    config: Dict[str, Any], summarizer: Summarizer = summarize,
) -> Dict[str, Any]:
    """Build the pipeline (every configuration and input check), then check the output folder, run
    the pipeline, write and return its stats. Building first means a run refused for a bad option
    or input never clears an old output, even with --overwrite."""
    start = time.perf_counter()
    p = beam.Pipeline(options=options)
    build(p)
    prepare_output(output, overwrite)
    result = p.run()
    result.wait_until_finish()
    stats = summarizer(result, config, time.perf_counter() - start)
    path = write_stats(output, stats)
    log.info(
        "wrote %d rows (negatives per source %s) in %.1fs; stats in %s",
        stats["rows"], stats["negatives_per_source"], stats["wall_time_s"], path,
    )
    return stats

