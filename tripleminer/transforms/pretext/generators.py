"""The one table of pair generators: adding a generator is a module (config, recipe, pure function),
its transform in `transforms.py`, and a row here; the pipeline derives its options from the row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

import apache_beam as beam

from tripleminer.transforms.pretext.core import CROP, ICT, NEIGHBORS, SALIENT, SPAN, TITLE, Record
from tripleminer.transforms.pretext.crop import CropConfig, crop_pairs
from tripleminer.transforms.pretext.ict import IctConfig, ict_pairs
from tripleminer.transforms.pretext.neighbors import NeighborsConfig, neighbors_pairs
from tripleminer.transforms.pretext.options import Option, build_config, config_options
from tripleminer.transforms.pretext.salient import SalientConfig, salient_pairs
from tripleminer.transforms.pretext.span import SpanConfig, span_pairs
from tripleminer.transforms.pretext.title import TitleConfig, title_pairs
from tripleminer.transforms.pretext.transforms import (CropPairs, IctPairs, NeighborsPairs, SalientPairs, SpanPairs,
                                                       TitlePairs)


@dataclass(frozen=True)
class Generator:
    """A pair generator. Every field of `config` but `rate` and the `context` ones is the option `--<name>_<field>`."""

    name: str  # the pairs' source, the name in --generators and the prefix of its options
    config: type  # its config dataclass, e.g. IctConfig; `config()` is the default configuration
    # (doc, seed, config) -> query records; salient's also takes its scorer, `salience=`, which
    # its transform builds from corpus statistics or the bi-encoder
    pairs: Callable[..., List[Record]]
    transform: Type[beam.PTransform]  # transform(seed, config): corpus docs in, query records out
    help: str  # one line, for --help
    # config fields set from the pipeline's shared settings rather than options of their own (see `make_config`)
    context: Tuple[str, ...] = ()


GENERATORS: Dict[str, Generator] = {g.name: g for g in (
    Generator(ICT, IctConfig, ict_pairs, IctPairs, "Inverse Cloze Task: a sentence vs. the rest of its passage"),
    Generator(CROP, CropConfig, crop_pairs, CropPairs, "Contriever: two independent random crops of a passage"),
    Generator(SPAN, SpanConfig, span_pairs, SpanPairs, "Spider: two passages of a document sharing a recurring span"),
    Generator(TITLE, TitleConfig, title_pairs, TitlePairs, "AugTriever: a document's title vs. its body; rate at most 1"),
    Generator(SALIENT, SalientConfig, salient_pairs, SalientPairs,
              "AugTriever: one of a document's most salient spans (bm25 or dense) vs. the document", context=("bm25", "encoder")),
    Generator(NEIGHBORS, NeighborsConfig, neighbors_pairs, NeighborsPairs, "CPT: two adjacent chunks of a document"),
)}


def generator_options(gen: Generator) -> List[Option]:
    """The `--<name>_<field>` options of a generator: every config field but `rate` (set by --generators).

    Helps are the fields' own, without the generator's name; --help shows them as `<name>: <help>`.
    """
    return config_options(gen.name, gen.config, exclude=("rate", *gen.context))


def make_config(name: str, rate: float, values: Mapping[str, Any], context: Optional[Mapping[str, Any]] = None) -> Any:
    """Generator `name`'s config at `rate`, its `context` fields from `context` (the pipeline's shared
    settings, e.g. `{"bm25": BM25Settings, "encoder": EncoderSettings}`; missing ones keep their default),
    its other fields from `{"<name>_<field>": value}` (see `build_config`).

    KeyError for an unknown generator; ValueError from the config's own checks.
    """
    gen = GENERATORS[name]
    shared = {key: context[key] for key in gen.context if key in (context or {})}
    return build_config(name, gen.config, values, rate=rate, **shared)
