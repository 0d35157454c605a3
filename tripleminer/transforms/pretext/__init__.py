"""Self-supervised positive pairs from a bare corpus: ICT, random crops, recurring spans, titles,
salient spans, neighbouring chunks, augmentation.

Each generator is a pure function of (document, seed, config) returning query records, plus a
Beam PTransform that wraps it and counts what it did; `GENERATORS` lists them. Every random draw
of a pair comes from an RNG derived from (seed, source, doc id, pair index) with a stable hash, so
the output does not depend on bundle order, parallelism or Python's per-process hash salt.

Modules: `core` (shared machinery), `ict`, `crop`, `span`, `title`, `salient`, `neighbors` (one per generator), `augment`
(augmentation and its vocabulary sample), `transforms` (Beam), `generators` (the table) and
`options` (command-line options from config fields).
"""

from tripleminer.transforms.pretext.augment import SIDES, AugmentConfig, augment_pair, augment_text, vocabulary_sample
from tripleminer.transforms.pretext.core import (AUGMENT, CROP, ICT, METRICS_NAMESPACE, NEIGHBORS, SALIENT, SAME_DOC, SPAN,
                                                 TITLE, Doc, Record, Skip, Span, derive_rng, find_span, pair_count,
                                                 without_span, word_run)
from tripleminer.transforms.pretext.crop import CropConfig, crop_pairs
from tripleminer.transforms.pretext.generators import GENERATORS, Generator, generator_options, make_config
from tripleminer.transforms.pretext.ict import IctConfig, ict_pairs
from tripleminer.transforms.pretext.neighbors import NeighborsConfig, neighbors_pairs
from tripleminer.transforms.pretext.options import (Option, augment_options, build_config, config_options,
                                                    make_augment_config)
from tripleminer.transforms.pretext.salient import (SCORERS, SPAN_KINDS, Bm25Salience, Candidate, DenseSalience, Salience,
                                                    SalientConfig, merge_stats, salient_pairs, term_stats)
from tripleminer.transforms.pretext.span import SpanConfig, is_valid_span, recurring_spans, span_pairs, split_passages
from tripleminer.transforms.pretext.title import TitleConfig, title_pairs
from tripleminer.transforms.pretext.transforms import (AugmentPairs, CropPairs, IctPairs, NeighborsPairs, SalientPairs,
                                                       SampleVocabulary, SpanPairs, TitlePairs, counter_value)

__all__ = [
    "AUGMENT", "CROP", "ICT", "METRICS_NAMESPACE", "NEIGHBORS", "SALIENT", "SAME_DOC", "SPAN", "TITLE", "Doc", "Record",
    "Skip", "derive_rng", "pair_count", "word_run", "without_span",
    "IctConfig", "ict_pairs", "CropConfig", "crop_pairs",
    "Span", "SpanConfig", "find_span", "is_valid_span", "recurring_spans", "span_pairs", "split_passages",
    "TitleConfig", "title_pairs", "NeighborsConfig", "neighbors_pairs",
    "SCORERS", "SPAN_KINDS", "Bm25Salience", "Candidate", "DenseSalience", "Salience", "SalientConfig", "merge_stats",
    "salient_pairs", "term_stats",
    "SIDES", "AugmentConfig", "augment_pair", "augment_text", "vocabulary_sample",
    "AugmentPairs", "CropPairs", "IctPairs", "NeighborsPairs", "SalientPairs", "SampleVocabulary", "SpanPairs",
    "TitlePairs", "counter_value",
    "GENERATORS", "Generator", "generator_options", "make_config",
    "Option", "augment_options", "build_config", "config_options", "make_augment_config",
]
