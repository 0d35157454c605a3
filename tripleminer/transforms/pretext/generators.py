"""The one table of pair generators: adding a generator is a module (config, recipe, pure function),
its transform in `transforms.py`, and a row here; the pipeline derives its options from the row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Type

import apache_beam as beam

from tripleminer.transforms.pretext.core import CROP, ICT, SPAN, Doc, Record
from tripleminer.transforms.pretext.crop import CropConfig, crop_pairs
from tripleminer.transforms.pretext.ict import IctConfig, ict_pairs
from tripleminer.transforms.pretext.options import Option, build_config, config_options
from tripleminer.transforms.pretext.span import SpanConfig, span_pairs
from tripleminer.transforms.pretext.transforms import CropPairs, IctPairs, SpanPairs


@dataclass(frozen=True)
class Generator:
    """A pair generator. Every field of `config` but `rate` is the option `--<name>_<field>`."""

    name: str  # the pairs' source, the name in --generators and the prefix of its options
    config: type  # its config dataclass, e.g. IctConfig; `config()` is the default configuration
    pairs: Callable[[Doc, int, Any], List[Record]]  # (doc, seed, config) -> query records
    transform: Type[beam.PTransform]  # transform(seed, config): corpus docs in, query records out
    help: str  # one line, for --help


GENERATORS: Dict[str, Generator] = {g.name: g for g in (
    Generator(ICT, IctConfig, ict_pairs, IctPairs, "Inverse Cloze Task: a sentence vs. the rest of its passage"),
    Generator(CROP, CropConfig, crop_pairs, CropPairs, "Contriever: two independent random crops of a passage"),
    Generator(SPAN, SpanConfig, span_pairs, SpanPairs, "Spider: two passages of a document sharing a recurring span"),
)}


def generator_options(gen: Generator) -> List[Option]:
    """The `--<name>_<field>` options of a generator: every config field but `rate` (set by --generators).

    Helps are the fields' own, without the generator's name; --help shows them as `<name>: <help>`.
    """
    return config_options(gen.name, gen.config, exclude=("rate",))


def make_config(name: str, rate: float, values: Mapping[str, Any]) -> Any:
    """Generator `name`'s config at `rate`, its other fields from `{"<name>_<field>": value}` (see `build_config`).

    KeyError for an unknown generator; ValueError from the config's own checks.
    """
    return build_config(name, GENERATORS[name].config, values, rate=rate)
