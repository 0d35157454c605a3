"""Stable per-record randomness, with no Beam or torch import, so every package can share it."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from the parts' text: the same on every worker and run (unlike `hash()`)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stable_rng(*parts: Any) -> np.random.Generator:
    """The RNG of one record, e.g. `stable_rng(seed, "random", query_id)`: order-independent sampling."""
    return np.random.default_rng(stable_seed(*parts))
