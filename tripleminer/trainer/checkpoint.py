"""Checkpoints a run resumes from exactly: the same weights after N/2 + N/2 steps as after N.

A checkpoint directory is a loadable sentence-transformers model (the weights) plus
`trainer_state.pt` (optimiser, scheduler, loss scaler, queue, momentum encoder, step and data
position; identical on every rank, written by rank 0) and `rng-rank{r}.pt` (each rank's python,
numpy, torch and CUDA RNG states: dropout draws differ per rank).

The data position is the epoch and the batches of it already trained on. Resuming re-reads those
batches and skips them without training: the stream's order is seeded per epoch, but which example a
shuffle buffer emits next depends on every row read before it, so re-reading is what reproduces it.
That costs one partial epoch of reading, never a forward pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from tripleminer.trainer.distributed import DistContext

STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class DataPosition:
    """Where the stream continues: `batches` of `epoch` are consumed (a finished epoch is the next one's start)."""

    epoch: int = 0
    batches: int = 0

    def normalised(self, batches_per_epoch: int) -> "DataPosition":
        return DataPosition(self.epoch + 1, 0) if self.batches >= batches_per_epoch else self


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rng-rank{rank}.pt"


def capture_rng(device: torch.device) -> Dict[str, Any]:
    """Every RNG state as tensors, ints and tuples only, so the file loads with `weights_only=True`
    (a checkpoint is never unpickled as arbitrary objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng(state: Dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_state(path: Path, state: Dict[str, Any], ctx: DistContext) -> None:
    """Rank 0 writes the shared training state, every rank its own RNG states (call on every rank)."""
    path.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        torch.save(state, path / STATE_FILE)
    torch.save(capture_rng(ctx.device), rng_file(path, ctx.rank))


def load_state(path: Path, ctx: DistContext) -> Dict[str, Any]:
    """The training state of a checkpoint, checked against this launch; restore its RNG with `restore_rng`."""
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a training checkpoint (no {STATE_FILE}; see --save_steps)")
    state = torch.load(path / STATE_FILE, map_location=ctx.device, weights_only=True)
    if state["world_size"] != ctx.world_size:
        raise ValueError(f"{path} was written by {state['world_size']} ranks; resume it with as many, "
                         f"not {ctx.world_size} (each rank's data slice and RNG depend on it)")
    state["rng"] = torch.load(rng_file(path, ctx.rank), weights_only=True)
    return state
