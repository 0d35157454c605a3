"""`tripleminer pretext`: a bare corpus (no queries, no labels) -> Parquet training triples.

    read corpus -> self-supervised pairs (ict, crop, span; per-document rates) [-> augment]
                -> candidates (same_doc, bm25, gold, random) -> sample -> texts -> write

Positives come from the pretext generators of `tripleminer.transforms.pretext`; each pair's
positive carries its source document's id, so the corpus negatives (BM25, random, gold) of a pair
never include the document it was cut from. Everything after the pairs is the mine pipeline's:
the same transforms, sampler, output schemas and stats. Run
`python -m tripleminer.pipelines.pretext --help` for every option; any Beam runner option works on
the same command line.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from tripleminer.logs import setup_logging
from tripleminer.pipelines import common
from tripleminer.pipelines.options import (add_argument_once, add_bm25_arguments, add_crossencoder_arguments, add_dense_arguments, add_policy_arguments, add_corpus_argument,
                                           add_output_arguments, parse_options)
from tripleminer.pipelines.stats import summarize
from tripleminer.transforms import pretext as pt
from tripleminer.schemas.mix import SourceMix, parse_mix
from tripleminer.transforms.texts import AttachTexts

log = logging.getLogger(__name__)

SOURCES = (pt.SAME_DOC,) + common.CORPUS_SOURCES  # negative sources this pipeline offers
DEFAULT_GENERATORS = "ict:1,crop:1,span:1"
DEFAULT_MIX = "same_doc:1,bm25:2@1-50,random:1"
DEFAULT_VOCABULARY_SIZE = 10_000
GENERATOR_TRANSFORMS = {pt.ICT: pt.IctPairs, pt.CROP: pt.CropPairs, pt.SPAN: pt.SpanPairs}

_ICT, _CROP, _SPAN, _AUGMENT = pt.IctConfig(), pt.CropConfig(), pt.SpanConfig(), pt.AugmentConfig()


class PretextOptions(PipelineOptions):
    """Corpus, pair generators, augmentation, negatives and output of `tripleminer pretext`."""

    # Enforced by `parse_options`, not argparse (see MineOptions).
    REQUIRED = ("corpus", "output")

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        # Flags that `tripleminer mine` declares too go through `add_argument_once` (options.py).
        io = parser.add_argument_group("inputs and outputs")
        add_corpus_argument(io)
        add_output_arguments(io)

        gen = parser.add_argument_group("positive pairs (docs/pretext.md)")
        gen.add_argument("--generators", default=DEFAULT_GENERATORS,
                         help="Pair generators and their rates: comma-separated name[:rate]. ict (Inverse Cloze Task: a sentence vs. the rest of its passage), "
                              "crop (Contriever: two independent random crops of a passage), span (Spider: two passages of a document sharing a recurring span). "
                              "The rate is pairs per document: floor(rate), plus one more with probability frac(rate); a missing rate means 1.")
        gen.add_argument("--ict_query_in_block_prob", type=float, default=_ICT.query_in_block_prob,
                         help="ict: probability that the query sentence is left in the positive (Megatron's 0.1).")
        gen.add_argument("--crop_ratio_min", type=float, default=_CROP.ratio_min,
                         help="crop: shortest crop, as a fraction of the passage's words (Contriever's 0.1).")
        gen.add_argument("--crop_ratio_max", type=float, default=_CROP.ratio_max,
                         help="crop: longest crop, as a fraction of the passage's words (Contriever's 0.5).")
        gen.add_argument("--crop_min_words", type=int, default=_CROP.min_words,
                         help="crop: passages with fewer words are skipped (counted).")
        gen.add_argument("--span_passage_words", type=int, default=_SPAN.passage_words,
                         help="span: documents are cut into passages of this many words (DPR's 100); a one-passage document is skipped.")
        gen.add_argument("--span_max_span_words", type=int, default=_SPAN.max_span_words,
                         help="span: longest recurring span, in words.")
        gen.add_argument("--span_query_window_words", type=int, default=_SPAN.query_window_words,
                         help="span: the query is a window of this many words around the span.")
        gen.add_argument("--span_keep_answer_prob", type=float, default=_SPAN.keep_answer_prob,
                         help="span: probability that the span stays in the query (Spider's 0.5); otherwise it is cut out.")

        aug = parser.add_argument_group("augmentation")
        aug.add_argument("--augment", default="none",
                         help="Which sides of every pair to augment: none, query, positive, or query,positive. Each word is deleted, replaced by a corpus word, "
                              "or masked, with the probabilities below. Negatives are retrieved with the pair's original query.")
        aug.add_argument("--augment_deletion_prob", type=float, default=_AUGMENT.deletion_prob,
                         help="Probability that a word is deleted.")
        aug.add_argument("--augment_replacement_prob", type=float, default=_AUGMENT.replacement_prob,
                         help="Probability that a word is replaced by a word drawn from the corpus vocabulary sample.")
        aug.add_argument("--augment_masking_prob", type=float, default=_AUGMENT.masking_prob,
                         help="Probability that a word is replaced by --augment_mask_token.")
        aug.add_argument("--augment_mask_token", default=_AUGMENT.mask_token, help="The mask token.")
        aug.add_argument("--augment_vocabulary_size", type=int, default=DEFAULT_VOCABULARY_SIZE,
                         help="Size of the replacement vocabulary: word occurrences sampled uniformly from the corpus (frequent words come up more often).")

        neg = parser.add_argument_group("negatives")
        add_argument_once(neg, "--negatives", default=DEFAULT_MIX,
                          help="Negative mix, per pair: comma-separated source:count[@start-end][/random|top]. Sources: same_doc (passages of the pair's document "
                               "that lack its span: span pairs only, ids <doc_id>#p<i>), bm25 (BM25 ranking of the pair's query over the corpus, minus the source "
                               "document), gold (source documents of other pairs), random (uniform from the corpus, minus the source document). "
                               "@start-end is a 1-based rank window (bm25 only); /top takes the best ranks of the window, /random (default) a uniform sample. "
                               "Sources are filled in the order given and never repeat a document.")
        add_argument_once(neg, "--seed", type=int, default=13,
                          help="Seed of everything random: pairs derive theirs from (seed, generator, doc id, pair index), augmentation and negatives from "
                               "(seed, query id), so output does not depend on order or parallelism.")
        add_bm25_arguments(neg)
        add_policy_arguments(neg)
        add_dense_arguments(parser.add_argument_group("dense (ann) negatives"))
        add_crossencoder_arguments(parser.add_argument_group("cross-encoder denoising"))


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

_GENERATOR_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?::(?P<rate>\d+(?:\.\d*)?|\.\d+))?$")


def parse_generators(spec: str) -> List[Tuple[str, float]]:
    """Parse `"ict:1,crop:0.5,span"` into [(generator, rate)], in the order given."""
    out: List[Tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _GENERATOR_SPEC.match(part)
        if not m:
            raise ValueError(f"--generators: bad entry {part!r}: expected name[:rate], e.g. ict:1 or crop:0.5")
        if m["name"] not in GENERATOR_TRANSFORMS:
            raise ValueError(f"--generators: unknown generator {m['name']!r}; choose from {', '.join(GENERATOR_TRANSFORMS)}")
        out.append((m["name"], float(m["rate"]) if m["rate"] else 1.0))
    names = [name for name, _ in out]
    if not out:
        raise ValueError("--generators: name at least one generator, e.g. ict:1")
    if len(set(names)) != len(names):
        raise ValueError(f"--generators {spec!r} names a generator twice")
    return out


def generator_config(name: str, rate: float, o: PretextOptions) -> Any:
    """The generator's config dataclass from the command line (its own checks raise ValueError)."""
    if name == pt.ICT:
        return pt.IctConfig(rate=rate, query_in_block_prob=o.ict_query_in_block_prob)
    if name == pt.CROP:
        return pt.CropConfig(rate=rate, ratio_min=o.crop_ratio_min, ratio_max=o.crop_ratio_max, min_words=o.crop_min_words)
    return pt.SpanConfig(rate=rate, passage_words=o.span_passage_words, max_span_words=o.span_max_span_words,
                         query_window_words=o.span_query_window_words, keep_answer_prob=o.span_keep_answer_prob)


def augment_config(o: PretextOptions) -> Optional[pt.AugmentConfig]:
    """The augmentation of `--augment`, or None when it is off."""
    sides = tuple(s.strip() for s in o.augment.split(",") if s.strip())
    if sides in ((), ("none",)):
        return None
    if o.augment_vocabulary_size < 1:
        raise ValueError("--augment_vocabulary_size must be >= 1")
    try:
        return pt.AugmentConfig(deletion_prob=o.augment_deletion_prob, replacement_prob=o.augment_replacement_prob,
                                masking_prob=o.augment_masking_prob, mask_token=o.augment_mask_token, sides=sides)
    except ValueError as err:
        raise ValueError(f"--augment: {err}") from err


@dataclass(frozen=True)
class Plan:
    """What a run will do, checked before any output is touched."""

    generators: Tuple[Tuple[str, Any], ...]  # (generator, its config)
    mix: Tuple[SourceMix, ...]
    augment: Optional[pt.AugmentConfig]


def plan(o: PretextOptions) -> Plan:
    """Parse and check the configuration; ValueError names the offending option."""
    generators = []
    for name, rate in parse_generators(o.generators):
        try:
            generators.append((name, generator_config(name, rate, o)))
        except ValueError as err:
            raise ValueError(f"--generators {name}: {err}") from err
    mix = parse_mix(o.negatives)
    common.validate_mix(mix, SOURCES)
    common.mix_policy(o, mix)
    names = [name for name, _ in generators]
    if any(m.source == pt.SAME_DOC for m in mix) and pt.SPAN not in names:
        raise ValueError("--negatives: same_doc negatives come with span pairs only; add span to --generators or drop same_doc")
    if o.output_format == "n-tuple":
        n = common.ntuple_size(o, mix)
        if n < 1:
            raise ValueError("--output_format n-tuple needs at least one negative per row")
        if any(m.source == pt.SAME_DOC for m in mix) and not o.ntuple_negatives and set(names) - {pt.SPAN}:
            log.warning("n-tuple rows need %d negatives, counting same_doc ones, which only span pairs have: rows of %s "
                        "pairs will be dropped; set --ntuple_negatives to keep them", n, ", ".join(sorted(set(names) - {pt.SPAN})))
    return Plan(tuple(generators), tuple(mix), augment_config(o))


def run_config(o: PretextOptions) -> Dict[str, Any]:
    """The options that decide the output, recorded in every shard and in stats.json."""
    return common.run_config(o, PretextOptions)


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def build(p: beam.Pipeline, o: PretextOptions, run_plan: Plan) -> None:
    """Wire the pretext pipeline onto `p`."""
    docs, corpus_ids, dead = common.read_corpus(p, o.corpus, o.max_doc_chars)

    # positives: one query record per pair, its positive tagged with the generator's name
    pairs = [
        docs | f"{name.capitalize()}Pairs" >> GENERATOR_TRANSFORMS[name](o.seed, config)
        for name, config in run_plan.generators
    ]
    records = pairs | "AllPairs" >> beam.Flatten()

    # candidates: retrieved with the original queries (augmented ones would search for noise and
    # mask tokens); same_doc candidates travel inside the span records and are merged by the sampler
    per_source = {m.source: m for m in run_plan.mix}
    candidate_lists, dense = common.corpus_negatives(records, docs, corpus_ids, per_source, o)

    if run_plan.augment:
        vocabulary = docs | "SampleVocabulary" >> pt.SampleVocabulary(o.augment_vocabulary_size, o.seed)
        records = records | "AugmentPairs" >> pt.AugmentPairs(vocabulary, o.seed, run_plan.augment)

    # sample -> texts -> write (positives and same_doc negatives already carry their texts)
    mix = list(run_plan.mix)
    rows = common.sample_rows(p, records, candidate_lists, mix, o, dense)
    rows = rows | "AttachTexts" >> AttachTexts(docs)
    rows = common.denoise(rows, o)
    common.write_outputs(rows, dead, o, mix, run_config(o))


def pretext_summary(counters: Dict[str, int], generators: List[str]) -> Dict[str, Dict[str, Any]]:
    """Per generator: documents seen, pairs made, documents or pairs skipped (by reason), pairs augmented."""
    out = {}
    for name in generators:
        skipped_prefix = f"{name}_skipped_"
        out[name] = {
            "docs": counters.get(f"{name}_docs", 0),
            "pairs": counters.get(f"{name}_pairs", 0),
            "skipped": {k[len(skipped_prefix):]: v for k, v in counters.items() if k.startswith(skipped_prefix)},
            "augmented": counters.get(f"{pt.AUGMENT}_{name}", 0),
        }
    return out


def summarize_pretext(result: PipelineResult, config: Dict[str, Any], wall_time_s: float) -> Dict[str, Any]:
    """The mine pipeline's stats, with positives counted per generator instead of per query."""
    stats = summarize(result, config, wall_time_s)
    for key in ("queries_with_positive", "queries_without_positive"):  # no queries here
        stats.pop(key, None)
    generators = [name for name, _ in parse_generators(config["generators"])]
    per_generator = pretext_summary(stats["counters"].get(pt.METRICS_NAMESPACE, {}), generators)
    stats["positives_per_source"] = {name: s["pairs"] for name, s in per_generator.items()}
    stats["pretext"] = per_generator
    return stats


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the pretext pipeline and return its stats (also written to OUTPUT/stats.json)."""
    _, options = parse_options([PretextOptions], argv, "tripleminer pretext", __doc__.split("\n")[0])
    o = options.view_as(PretextOptions)
    run_plan = plan(o)
    log.info("pretext pairs of %s -> %s (generators %s, augment %s, negatives %s, seed %d)",
             o.corpus, o.output, o.generators, o.augment, o.negatives, o.seed)
    return common.execute(options, o.output, o.overwrite, lambda p: build(p, o, run_plan), run_config(o),
                          summarize_pretext)


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
