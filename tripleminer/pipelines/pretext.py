"""`tripleminer pretext`: a bare corpus (no queries, no labels) -> Parquet training triples.

    read corpus -> self-supervised pairs (generator table: ict, crop, span, title, salient, neighbors;
                   per-document rates)
                -> candidates (same_doc, bm25, ann, gold, random) [-> augment] -> sample -> texts -> write

Each pair's positive carries its source document's id, so the corpus negatives of a pair never
include the document it was cut from. Everything after the pairs is the mine pipeline's
`RecordsToTriples`: the same transforms, sampler, output schemas and stats. Run
`python -m tripleminer.pipelines.pretext --help` for every option.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from tripleminer.pipelines.driver import PipelineSpec
from tripleminer.pipelines.options import (BM25Options, CorpusOptions, CrossEncoderOptions, DenseOptions, GeneratorOptions,
                                           GuardOptions, MixOptions, OutputOptions)
from tripleminer.pipelines.settings import TriplesSettings, triples_settings
from tripleminer.pipelines.stats import summarize
from tripleminer.pipelines.triples import RecordsToTriples, read_corpus
from tripleminer.transforms import pretext as pt

log = logging.getLogger(__name__)

DEFAULT_GENERATORS = "ict:1,crop:1,span:1"
DEFAULT_MIX = "same_doc:1,bm25:2@1-50,random:1"
DEFAULTS = {"negatives": DEFAULT_MIX, "generators": DEFAULT_GENERATORS}
GROUPS = (CorpusOptions, GeneratorOptions, OutputOptions, MixOptions, BM25Options, DenseOptions, CrossEncoderOptions, GuardOptions)

_GENERATOR_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?::(?P<rate>\d+(?:\.\d*)?|\.\d+))?$")


def parse_generators(spec: str) -> List[Tuple[str, float]]:
    """Parse `"ict:1,crop:0.5,span"` into [(generator, rate)], in the order given."""
    out: List[Tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _GENERATOR_SPEC.match(part)
        if not m:
            raise ValueError(f"--generators: bad entry {part!r}: expected name[:rate], e.g. ict:1 or crop:0.5")
        if m["name"] not in pt.GENERATORS:
            raise ValueError(f"--generators: unknown generator {m['name']!r}; choose from {', '.join(pt.GENERATORS)}")
        out.append((m["name"], float(m["rate"]) if m["rate"] else 1.0))
    names = [name for name, _ in out]
    if not out:
        raise ValueError("--generators: name at least one generator, e.g. ict:1")
    if len(set(names)) != len(names):
        raise ValueError(f"--generators {spec!r} names a generator twice")
    return out


@dataclass(frozen=True)
class PretextSettings:
    generators: Tuple[Tuple[str, Any], ...]  # (generator, its config)
    augment: Optional[pt.AugmentConfig]
    vocabulary_size: int
    triples: TriplesSettings


def plan(options: PipelineOptions) -> PretextSettings:
    """Options -> settings; ValueError names the offending option."""
    o = options.view_as(GeneratorOptions)
    values = options.get_all_options()
    triples = triples_settings(options, GROUPS, "pair", DEFAULTS)
    # what generators share with the negatives: salient's bm25 analyzer and bi-encoder are the index's and ann's
    context = {"bm25": triples.candidates.bm25.index, "encoder": triples.candidates.dense.encoder}
    generators = []
    for name, rate in parse_generators(o.generators or DEFAULT_GENERATORS):
        try:
            generators.append((name, pt.make_config(name, rate, values, context)))
        except ValueError as err:
            raise ValueError(f"--generators {name}: {err}") from err
    names = {name for name, _ in generators}
    if pt.SAME_DOC in triples.sources and pt.SPAN not in names:
        raise ValueError("--negatives: same_doc negatives come with span pairs only; add span to --generators or drop same_doc")
    if triples.output.format == "n-tuple" and pt.SAME_DOC in triples.sources and not triples.config["ntuple_negatives"] and names - {pt.SPAN}:
        log.warning("n-tuple rows need %d negatives, counting same_doc ones, which only span pairs have: rows of %s pairs will be "
                    "dropped; set --ntuple_negatives to keep them", triples.output.ntuple_negatives, ", ".join(sorted(names - {pt.SPAN})))
    return PretextSettings(tuple(generators), augment_config(o), o.augment_vocabulary_size, triples)


def augment_config(o: GeneratorOptions) -> Optional[pt.AugmentConfig]:
    """The augmentation of `--augment`, or None when it is off."""
    sides = tuple(s.strip() for s in o.augment.split(",") if s.strip())
    if sides in ((), ("none",)):
        return None
    if o.augment_vocabulary_size < 1:
        raise ValueError("--augment_vocabulary_size must be >= 1")
    try:
        return pt.make_augment_config(sides, o.get_all_options())
    except ValueError as err:
        raise ValueError(f"--augment: {err}") from err


def build(p: beam.Pipeline, s: PretextSettings) -> None:
    """read -> pairs (one query record per pair) -> RecordsToTriples (augmenting after retrieval)."""
    corpus = read_corpus(p, s.triples.corpus)
    pairs = [
        corpus.docs | f"{name.capitalize()}Pairs" >> pt.GENERATORS[name].transform(s.triples.seed, config)
        for name, config in s.generators
    ]
    rewrite = None
    if s.augment:
        vocabulary = corpus.docs | "SampleVocabulary" >> pt.SampleVocabulary(s.vocabulary_size, s.triples.seed)
        rewrite = "AugmentPairs" >> pt.AugmentPairs(vocabulary, s.triples.seed, s.augment)
    records = pairs | "AllPairs" >> beam.Flatten()
    records | "RecordsToTriples" >> RecordsToTriples(s.triples, corpus, rewrite=rewrite)


def describe(s: PretextSettings) -> str:
    t = s.triples
    return (f"pairs of {t.corpus.pattern} -> {t.output.path} (generators {t.config['generators']}, augment {t.config['augment']}, "
            f"negatives {t.config['negatives']}, seed {t.seed})")


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


SPEC = PipelineSpec("tripleminer pretext", __doc__.split("\n")[0], GROUPS, plan, build, describe, DEFAULTS, summarize_pretext)
run, main = SPEC.run, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
