"""Exact resume: N steps straight give the weights of N/2 steps, a checkpoint, and N/2 resumed steps,
in one process and over two gloo ranks, with dropout on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from sentence_transformers import SentenceTransformer

from test_trainer_gradcache import one_thread  # noqa: F401  (autouse)
from test_trainer_train import shards  # noqa: F401  (the fixture: 6 rows in two shards)
from tripleminer.trainer import checkpoint
from tripleminer.trainer.cli import train_main
from tripleminer.trainer.distributed import DistContext

pytestmark = pytest.mark.slow  # trains MiniLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMON = ["--negatives", "bm25:1,gold:1", "--max_seq_length", "16", "--learning_rate", "1e-4", "--max_steps", "4",
          "--save_steps", "2", "--warmup_ratio", "0.25", "--shuffle_buffer", "4", "--logging_steps", "1",
          "--disable_tqdm", "--device", "cpu"]
CONFIGS = {
    # 3 batches an epoch: the checkpoint falls after 2 of them, the resumed run crosses into epoch 1.
    "queue": ["--batch_size", "2", "--queue_size", "8", "--queue_momentum", "0.9"],
    # 2 steps an epoch: the checkpoint falls on the epoch's end.
    "gradcache": ["--batch_size", "2", "--gradient_accumulation_steps", "2", "--grad_cache_chunk", "1",
                  "--loss", "triplet", "--triplet_negative", "hardest_in_batch", "--margin", "1.0"],
}


def weights(path: Path) -> dict:
    return SentenceTransformer(str(path), device="cpu").state_dict()


def assert_same_weights(path: Path, expected: Path) -> float:
    got, want = weights(path), weights(expected)
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= 1e-6, f"weights differ by up to {worst}"
    return worst


def straight_and_resumed(shards: str, tmp_path: Path, extra: list) -> tuple:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(["--triples", shards, "--output_dir", str(straight), *COMMON, *extra]) == 0
    assert train_main(["--triples", shards, "--output_dir", str(resumed), "--resume_from",
                       str(straight / "checkpoint-2"), *COMMON, *extra]) == 0
    return straight, resumed


@pytest.mark.parametrize("config", CONFIGS)
def test_resumed_run_ends_with_the_weights_of_the_straight_run(shards, tmp_path, config):  # noqa: F811
    straight, resumed = straight_and_resumed(shards, tmp_path, CONFIGS[config])
    half = straight / "checkpoint-2"
    assert {checkpoint.STATE_FILE, "rng-rank0.pt", "model.safetensors"} <= {p.name for p in half.iterdir()}
    assert_same_weights(resumed, straight)
    name = "0.model.encoder.layer.0.attention.self.query.weight"
    assert (weights(resumed)[name] - weights(half)[name]).abs().max() > 1e-6  # the resumed half did train


def test_resuming_without_the_rng_states_diverges(shards, tmp_path, monkeypatch):  # noqa: F811
    """Guard for the test above: dropout makes the restored RNG matter."""
    monkeypatch.setattr(checkpoint, "restore_rng", lambda state, device: None)
    straight, resumed = straight_and_resumed(shards, tmp_path, CONFIGS["queue"])
    with pytest.raises(AssertionError, match="weights differ"):
        assert_same_weights(resumed, straight)


def test_a_checkpoint_is_refused_by_another_number_of_ranks(tmp_path):
    state = {"world_size": 2}
    torch.save(state, tmp_path / checkpoint.STATE_FILE)
    with pytest.raises(ValueError, match="2 ranks"):
        checkpoint.load_state(tmp_path, DistContext(0, 1, 0, torch.device("cpu")))
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        checkpoint.load_state(tmp_path / "missing", DistContext(0, 1, 0, torch.device("cpu")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, world_size: int, ports: list, runs: list) -> None:
    """Each run is a fresh Trainer with its own process group, as if launched anew."""
    torch.set_num_threads(1)
    for port, argv in zip(ports, runs):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        assert train_main(argv) == 0


def test_two_gloo_ranks_resume_exactly(shards, tmp_path):  # noqa: F811
    """3 rows a rank, batch 1: the checkpoint falls after 2 of an epoch's 3 batches."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    argv = ["--triples", shards, *COMMON, "--batch_size", "1"]
    runs = [[*argv, "--output_dir", str(straight)],
            [*argv, "--output_dir", str(resumed), "--resume_from", str(straight / "checkpoint-2")]]
    mp.spawn(rank_main, args=(2, [free_port(), free_port()], runs), nprocs=2, join=True)
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= {p.name for p in (straight / "checkpoint-2").iterdir()}
    assert_same_weights(resumed, straight)
