"""The plan of a run: options turned into typed, frozen settings, validated once, before any Beam work.

Pipelines receive settings, never the options object, so a transform's inputs are visible in its
constructor and a configuration error names the offending option before any output is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

import tripleminer
from tripleminer.encoders import EncoderSettings, default_model
from tripleminer.index.bm25 import BM25Settings
from tripleminer.index.dense import AnnSettings
from tripleminer.pipelines.options import (BM25Options, CorpusOptions, CrossEncoderOptions, DenseOptions, Groups, GuardOptions,
                                           MixOptions, OutputOptions, recorded_options)
from tripleminer.precision import resolve_precision
from tripleminer.schemas.mix import SOURCES, SourceMix, offered_sources, parse_mix
from tripleminer.transforms.candidates import DEFAULT_ANN_DEPTH, BM25Search, CandidateSettings, DenseSearch
from tripleminer.transforms.crossencoder import DenoiseSettings
from tripleminer.transforms.leakage import LeakageSettings, resolve_eval
from tripleminer.transforms.near_duplicates import NearDuplicateSettings
from tripleminer.transforms.sample import MixPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSettings:
    pattern: str
    max_doc_chars: Optional[int]


@dataclass(frozen=True)
class OutputSettings:
    """Where and how the triples are written."""

    path: str
    overwrite: bool
    format: str  # nested | triplet | n-tuple
    ntuple_negatives: int  # N of the n-tuple layout: --ntuple_negatives, or the mix's total count
    num_shards: int
    query_clusters: int = 0  # K of --query_clusters (nested rows get a query_cluster column); 0: off


@dataclass(frozen=True)
class GuardSettings:
    """Evaluation-leakage guard, near-duplicate negative filter, audit sample: all off by default."""

    leakage: Optional[LeakageSettings] = None
    near_duplicates: NearDuplicateSettings = NearDuplicateSettings()
    audit_sample: int = 0  # negatives sampled per stratum for audit-*.jsonl; 0: no audit sample


@dataclass(frozen=True)
class TriplesSettings:
    """Everything from query records to written triples, shared by every pipeline."""

    corpus: CorpusSettings
    output: OutputSettings
    mix: Tuple[SourceMix, ...]
    policy: MixPolicy
    candidates: CandidateSettings
    denoise: Optional[DenoiseSettings]
    config: Dict[str, Any] = field(compare=False)  # recorded in every shard and in stats.json
    guard: GuardSettings = GuardSettings()

    @property
    def seed(self) -> int:
        return self.candidates.seed

    @property
    def sources(self) -> Tuple[str, ...]:
        return tuple(m.source for m in self.mix)


def filter_value(given: Optional[Any], name: str, negatives: Optional[str], resolved: Mapping[str, Any]) -> Optional[Any]:
    """A filter option of the mix: as given (0 turns it off), else the pipeline's default for it when the
    default mix is used too (they were measured together), else off. A user's own --negatives gets no
    filter it did not ask for."""
    if given is not None:
        return given or None
    return resolved.get(name) if negatives is None else None


def triples_settings(options: PipelineOptions, groups: Groups, origin: str, resolved: Mapping[str, Any]) -> TriplesSettings:
    """The shared settings of a pipeline whose own candidates come from `origin` ("log" or "pair");
    `resolved` holds its per-pipeline defaults (e.g. `negatives`). ValueError names the option."""
    corpus, out, mix_o = options.view_as(CorpusOptions), options.view_as(OutputOptions), options.view_as(MixOptions)
    bm25_o, dense_o, ce_o = options.view_as(BM25Options), options.view_as(DenseOptions), options.view_as(CrossEncoderOptions)
    spec = mix_o.negatives if mix_o.negatives is not None else resolved["negatives"]
    mix = tuple(parse_mix(spec))
    validate_mix(mix, offered_sources(origin))
    policy = MixPolicy(mix_o.max_hard_negatives, mix_o.easy_per_hard,
                       filter_value(mix_o.pos_aware_ratio, "pos_aware_ratio", mix_o.negatives, resolved),
                       mix_o.pos_aware_margin,
                       max_positive_rank=filter_value(mix_o.max_positive_rank, "max_positive_rank", mix_o.negatives, resolved),
                       backfill=not mix_o.no_backfill)
    dense = any(SOURCES[m.source].dense for m in mix)
    if (policy.max_score_ratio is not None or policy.min_margin is not None or policy.max_positive_rank is not None) and not dense:
        raise ValueError("--pos_aware_ratio/--pos_aware_margin/--max_positive_rank read dense scores: add ann to --negatives")
    ntuple = out.ntuple_negatives or sum(m.count for m in mix)
    if out.output_format == "n-tuple" and ntuple < 1:
        raise ValueError("--output_format n-tuple needs at least one negative per row")
    validate_query_clusters(out.query_clusters, out.output_format)
    try:
        encoder = EncoderSettings(dense_o.model or default_model(), dense_o.max_seq_length, dense_o.embed_backend, dense_o.device,
                                  dense_o.encode_batch_size, precision=dense_o.precision)
    except ValueError as e:  # "precision bf16: why" -> "--precision bf16: why"
        raise ValueError(f"--{e}" if str(e).startswith("precision ") else f"--precision: {e}") from e
    candidates = CandidateSettings(
        seed=mix_o.seed,
        work_dir=out.work_dir,
        bm25=BM25Search(BM25Settings(bm25_o.bm25_backend, bm25_o.bm25_k1, bm25_o.bm25_b, bm25_o.bm25_stemmer),
                        bm25_o.bm25_shards, bm25_o.bm25_depth),
        dense=DenseSearch(encoder, dense_o.embed_min_batch_size, dense_o.embed_max_batch_size,
                          AnnSettings(dense_o.ann_index, dense_o.ann_nprobe, dense_o.ann_ef_search) if dense else AnnSettings(),
                          dense_o.ann_shards, dense_o.ann_depth or positive_rank_depth(mix, policy)),
        query_batch_size=bm25_o.query_batch_size,
    )
    denoise = None
    if ce_o.cross_encoder:
        try:  # --ce_precision, else --precision's request; the cross-encoder runs on torch whatever --embed_backend says
            ce_precision = resolve_precision(ce_o.ce_precision or dense_o.precision, dense_o.device)
        except ValueError as e:
            raise ValueError(f"{'--ce_' if ce_o.ce_precision else '--'}{e} (cross-encoder)") from e
        denoise = DenoiseSettings(ce_o.cross_encoder, ce_o.ce_drop_threshold, ce_o.ce_augment, ce_o.ce_positive_threshold,
                                  ce_o.ce_negative_threshold, ce_o.ce_augment_max_labels, ce_o.ce_batch_pairs,
                                  max_length=ce_o.ce_max_length, device=dense_o.device, precision=ce_precision)
    guard = guard_settings(options.view_as(GuardOptions), dense)
    # the precisions the models will run at (auto resolved here, on the machine that plans the run)
    precisions = {"precision_resolved": encoder.precision, **({"ce_precision_resolved": denoise.precision} if denoise else {})}
    config = {"tripleminer_version": tripleminer.__version__,
              **recorded_options(options, groups, resolved), **precisions}
    return TriplesSettings(
        corpus=CorpusSettings(corpus.corpus, corpus.max_doc_chars),
        output=OutputSettings(out.output, out.overwrite, out.output_format, ntuple, out.num_shards, out.query_clusters),
        mix=mix, policy=policy, candidates=candidates, denoise=denoise, config=config, guard=guard,
    )


def positive_rank_depth(mix: Sequence[SourceMix], policy: MixPolicy) -> Optional[int]:
    """The ann depth --max_positive_rank needs when --ann_depth is not given: the positive's rank is
    counted among the fetched candidates, so a window ending at or near it (`ann:5@10-50` with 50)
    would never rank a positive past it and the filter would be silently off. Twice the limit leaves
    room for the query's own judged documents among the top; a longer window keeps its own end."""
    if policy.max_positive_rank is None:
        return None
    return max([m.rank_end or DEFAULT_ANN_DEPTH for m in mix if m.source == "ann"] + [2 * policy.max_positive_rank])


def validate_query_clusters(k: int, output_format: str) -> None:
    """K is 0 (off) or >= 2 (one cluster is no clustering); that K is at most the number of queries is
    known only once they are read, and checked where k-means trains. Flat layouts are refused: their
    every column goes to sentence-transformers as text, so a cluster id there would become a text."""
    if k < 0 or k == 1:
        raise ValueError(f"--query_clusters must be 0 (off) or at least 2, got {k}")
    if k and output_format != "nested":
        raise ValueError(f"--query_clusters writes a column of the nested layout only; --output_format {output_format} feeds "
                         "every column to sentence-transformers as text; use --output_format nested or drop --query_clusters")


def guard_settings(o: GuardOptions, dense: bool) -> GuardSettings:
    """`GuardOptions` -> settings; the evaluation files are found (not yet read) here, so a wrong
    --exclude_eval stops the run before it starts."""
    if not 0.0 < o.leak_jaccard <= 1.0:
        raise ValueError(f"--leak_jaccard must be in (0, 1], got {o.leak_jaccard}")
    if o.audit_sample < 0:
        raise ValueError("--audit_sample must be >= 0")
    if o.dup_cosine is not None and not dense:
        raise ValueError("--dup_cosine compares the bi-encoder's document vectors: add ann to --negatives")
    leakage = LeakageSettings(resolve_eval(o.exclude_eval), o.leak_jaccard, o.exclude_eval_docs) if o.exclude_eval else None
    return GuardSettings(leakage, NearDuplicateSettings(o.dup_jaccard, o.dup_cosine), o.audit_sample)


def validate_mix(mix: Sequence[SourceMix], offered: Sequence[str]) -> None:
    """Configuration errors of `--negatives` that every pipeline checks the same way."""
    for m in mix:
        if m.source not in offered:
            raise ValueError(f"--negatives: unknown source {m.source!r}; this pipeline offers {', '.join(offered)}")
        if m.rank_start is not None and not SOURCES[m.source].ranked:
            raise ValueError(f"--negatives: {m.source} is unranked, so it takes no rank window")
