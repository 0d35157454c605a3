"""Command-line options derived from config dataclasses, so a new config field is a new option.

Convention: field `<field>` of a config with prefix `<prefix>` is the option `--<prefix>_<field>`,
its type the field's annotation, its default the field's, its help the field's `metadata["help"]`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Collection, List, Mapping, NamedTuple, Sequence, get_type_hints

from tripleminer.transforms.pretext.augment import AugmentConfig
from tripleminer.transforms.pretext.core import AUGMENT


class Option(NamedTuple):
    """One option: `dest` is its argparse destination (and its key in `values`), `flag` what a user types."""

    dest: str
    type: type
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return f"--{self.dest}"


def config_options(prefix: str, config: type, exclude: Collection[str]) -> List[Option]:
    """The options of every field of the `config` dataclass but those in `exclude`, in field order."""
    hints = get_type_hints(config)
    return [Option(f"{prefix}_{f.name}", hints[f.name], f.default, f.metadata["help"])
            for f in fields(config) if f.name not in exclude]


def build_config(prefix: str, config: type, values: Mapping[str, Any], **fixed: Any) -> Any:
    """`config(**fixed)` with each other field taken from `values["<prefix>_<field>"]`.

    Keys of `values` that are no field of `config` are ignored (pass every parsed option); fields
    missing from `values` keep their default. The config's own checks raise ValueError.
    """
    taken = {f.name: values[f"{prefix}_{f.name}"] for f in fields(config)
             if f.name not in fixed and f"{prefix}_{f.name}" in values}
    return config(**fixed, **taken)


def augment_options() -> List[Option]:
    """The `--augment_<field>` options of `AugmentConfig`; its `sides` come from `--augment`."""
    return config_options(AUGMENT, AugmentConfig, exclude=("sides",))


def make_augment_config(sides: Sequence[str], values: Mapping[str, Any]) -> AugmentConfig:
    """The augmentation of `sides` from `{"augment_<field>": value}` (see `build_config`)."""
    return build_config(AUGMENT, AugmentConfig, values, sides=tuple(sides))
