"""Process group set-up and collectives, so the rest of the trainer reads the same with 1 or N ranks.

`torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK; without them the trainer is a single process and every
collective here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group `torchrun` describes: nccl on GPUs, gloo on CPU (so a CPU box runs N ranks).

    Under torchrun the group is formed even for one rank, so that run takes the same DDP and
    collective code path as a many-rank one; started plainly, the process trains alone.
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        resolved = torch.device("cuda", local_rank)
    else:
        resolved = torch.device(device or "cpu")
    if launched and not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel around `model` when there are several ranks, else `model` itself.

    find_unused_parameters: checkpoints carry weights the sentence encoder never uses (BERT's pooler),
    which DDP would otherwise wait for. (static_graph would avoid the per-step search but breaks
    `no_sync` gradient accumulation on the first step.)
    """
    if not is_distributed():
        return model
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def world() -> Tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(tensor: torch.Tensor, with_grad: bool = False) -> Tuple[torch.Tensor, List[int]]:
    """Concatenate every rank's `tensor` along dim 0, rank order, and return each rank's row count.

    Ranks may hold different row counts (a short last batch, examples with fewer negatives), so rows
    are padded to the largest count for the collective and the padding is cut off again. With
    `with_grad` the gather is differentiable: its backward sums, over ranks, the gradient each rank
    computed for this rank's rows, so every rank's loss reaches every rank's encoder.
    """
    if not is_distributed():
        return tensor, [tensor.shape[0]]
    world_size = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = tensor
    if tensor.shape[0] < max(sizes):
        pad = tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    if with_grad:
        parts = list(dist_fn.all_gather(padded))
    else:
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sizes


def sum_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Sum of `value` over ranks (a copy; no gradient), for counts and logged losses."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value)
    return value
