"""GradCache (Gao et al. 2021): a contrastive batch of any size in the activation memory of one chunk.

The loss couples every query with every passage of the batch (and of every rank), so the batch cannot
be cut into independent micro-batches. GradCache cuts the work instead: (1) embed the batch chunk by
chunk without autograd graphs, (2) compute the loss on those embeddings and back-propagate it to them
only, caching d loss / d embedding, (3) embed each chunk again, now with a graph, and back-propagate the
cached gradient through it. The parameter gradients are those of one pass over the whole batch; the
cost is a second forward. Step (3) must draw the dropout masks of step (1), so each chunk's RNG state
is recorded before (1) and replayed for (3), as GradCache's `RandContext` does.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Iterator, List, Tuple

import torch

from tripleminer.trainer.data import split_range

Encode = Callable[[List[str], List[str]], Tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RngState:
    """The CPU (and, on CUDA, the device's) RNG state at one moment, to replay what was drawn after it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, then put the RNG back where it was."""
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def chunk_slices(num_queries: int, num_passages: int, chunk: int) -> List[Tuple[slice, slice]]:
    """(query slice, passage slice) pairs: as many query chunks as passage chunks, none over `chunk` texts.

    Pairing them keeps one forward per chunk, and the last (the one DDP synchronises on) always runs
    both towers.
    """
    count = max(1, math.ceil(max(num_queries, num_passages) / chunk))
    return [
        (slice(*split_range(0, num_queries, count, i)), slice(*split_range(0, num_passages, count, i)))
        for i in range(count)
    ]


class GradCache:
    """`encode` (the possibly DDP-wrapped dual encoder under autocast) run chunk by chunk, as above."""

    def __init__(self, encode: Encode, chunk: int, device: torch.device) -> None:
        if chunk < 1:
            raise ValueError("GradCache chunk must be positive")
        self.encode, self.chunk, self.device = encode, chunk, device

    def __call__(
        self,
        queries: List[str],
        passages: List[str],
        loss_fn: LossFn,
        backward: Callable[[torch.Tensor], None],
        sync: Callable[[bool], ContextManager],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Leave in `.grad` what `backward(loss_fn(*encode(queries, passages)))` would; return the loss and
        the (detached) query and passage embeddings. `sync(last)` wraps each chunk's forward and backward
        (DDP's `no_sync` except for the last chunk)."""
        slices = chunk_slices(len(queries), len(passages), self.chunk)
        states, parts = [], []
        with torch.no_grad():
            for q, p in slices:
                states.append(RngState(self.device))
                parts.append(self.encode(queries[q], passages[p]))
        query_embeddings = torch.cat([qe for qe, _ in parts]).requires_grad_()
        passage_embeddings = torch.cat([pe for _, pe in parts]).requires_grad_()
        loss = loss_fn(query_embeddings, passage_embeddings)
        backward(loss)  # reaches the embeddings only: they are leaves
        for i, ((q, p), state) in enumerate(zip(slices, states)):
            with sync(i + 1 == len(slices)):
                with state.replay():
                    outputs = self.encode(queries[q], passages[p])
                pairs = [(out, cached.grad[s].to(out.dtype))
                         for out, cached, s in zip(outputs, (query_embeddings, passage_embeddings), (q, p))
                         if out.numel() and cached.grad is not None]
                torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        return loss.detach(), query_embeddings.detach(), passage_embeddings.detach()
