"""Self-supervised positive pairs from a bare corpus: ICT, random crops, recurring spans, augmentation.

Each generator is a pure function of (document, seed, config) returning query records, plus a
Beam PTransform that wraps it and counts what it did; `GENERATORS` lists them. Every random draw
of a pair comes from an RNG derived from (seed, source, doc id, pair index) with a stable hash, so
the output does not depend on bundle order, parallelism or Python's per-process hash salt.

Modules: `core` (shared machinery), `ict`, `crop`, `span` (one per generator), `augment`
(augmentation and its vocabulary sample), `transforms` (Beam), `generators` (the table) and
`options` (command-line options from config fields).
"""

from tripleminer.transforms.pretext.augment import SIDES, AugmentConfig, augment_pair, augment_text, vocabulary_sample
from tripleminer.transforms.pretext.core import (AUGMENT, CROP, ICT, METRICS_NAMESPACE, SAME_DOC, SPAN, Doc, Record,
                                                 Skip, derive_rng, pair_count)
from tripleminer.transforms.pretext.crop import CropConfig, crop_pairs
from tripleminer.transforms.pretext.generators import GENERATORS, Generator, generator_options, make_config
from tripleminer.transforms.pretext.ict import IctConfig, ict_pairs
from tripleminer.transforms.pretext.options import (Option, augment_options, build_config, config_options,
                                                    make_augment_config)
from tripleminer.transforms.pretext.span import (Span, SpanConfig, find_span, is_valid_span, recurring_spans,
                                                 span_pairs, split_passages)
from tripleminer.transforms.pretext.transforms import (AugmentPairs, CropPairs, IctPairs, SampleVocabulary, SpanPairs,
                                                       counter_value)

__all__ = [
    "AUGMENT", "CROP", "ICT", "METRICS_NAMESPACE", "SAME_DOC", "SPAN", "Doc", "Record", "Skip", "derive_rng",
    "pair_count",
    "IctConfig", "ict_pairs", "CropConfig", "crop_pairs",
    "Span", "SpanConfig", "find_span", "is_valid_span", "recurring_spans", "span_pairs", "split_passages",
    "SIDES", "AugmentConfig", "augment_pair", "augment_text", "vocabulary_sample",
    "AugmentPairs", "CropPairs", "IctPairs", "SampleVocabulary", "SpanPairs", "counter_value",
    "GENERATORS", "Generator", "generator_options", "make_config",
    "Option", "augment_options", "build_config", "config_options", "make_augment_config",
]
