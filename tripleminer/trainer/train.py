"""Training driver: `python -m tripleminer.trainer.train`, or under `torchrun --nproc_per_node N -m ...` for N ranks."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from tripleminer.trainer import checkpoint
from tripleminer.trainer.arguments import DataArguments, ModelArguments, TrainingArguments, parse_train_args
from tripleminer.trainer.checkpoint import DataPosition
from tripleminer.trainer.data import (
    Batch,
    NegativeMix,
    TripleStream,
    confident_rows,
    list_row_groups,
    require_cluster_column,
    training_loader,
)
from tripleminer.trainer.distributed import (
    DistContext,
    barrier,
    gather_rows,
    init_distributed,
    shutdown,
    sum_across_ranks,
    wrap_model,
)
from tripleminer.trainer.grad_cache import GradCache
from tripleminer.trainer.losses import LTRE, ContrastiveLoss
from tripleminer.trainer.ltre import build_ltre_loss
from tripleminer.trainer.memory import EmbeddingQueue, MomentumEncoder
from tripleminer.trainer.model import DualEncoder

logger = logging.getLogger("tripleminer.trainer")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Same seed on every rank: identical initial weights for new layers, reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def build_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and normalisation weights (1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class Trainer:
    """One training run: owns the model, data, loss, optimiser and the optional negative queue."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, ctx: DistContext):
        self.args, self.ctx = args, ctx
        listed = list_row_groups(data_args.triples)
        row_groups, skipped = confident_rows(listed, data_args.min_positive_confidence)
        if data_args.min_positive_confidence is not None:
            logger.info("--min_positive_confidence %g (null counts as 1.0): skipped %d of %d rows (%s)",
                        data_args.min_positive_confidence, sum(skipped.values()), sum(g.num_rows for g in listed),
                        ", ".join(f"{reason} {n}" for reason, n in skipped.items()) or "none")
        if data_args.batch_by_cluster:
            require_cluster_column(row_groups)
        self.dataset = TripleStream(
            row_groups,
            NegativeMix.parse(data_args.negatives),
            seed=args.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            shuffle_buffer=data_args.shuffle_buffer,
        )
        self.loader = training_loader(
            self.dataset, args.batch_size, data_args.num_workers, data_args.batch_by_cluster, args.seed
        )
        self.batches_per_epoch = self.dataset.batches_per_epoch(args.batch_size, data_args.num_workers)
        if self.batches_per_epoch == 0:
            raise ValueError(f"no training rows for rank {ctx.rank}: {len(self.dataset)} rows per rank")
        steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        self.total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_epochs
        self.num_epochs = math.ceil(self.total_steps / steps_per_epoch)

        self.model = DualEncoder.from_pretrained(
            args.resume_from or model_args.model_name_or_path,  # a checkpoint is a model directory
            separate_towers=model_args.separate_towers or args.loss == LTRE,
            max_seq_length=model_args.max_seq_length,
            device=ctx.device,
        )
        self.ltre = build_ltre_loss(
            self.model, row_groups, args.ltre_corpus, args.ltre_top_k, args.temperature, args.batch_size,
            show_progress=ctx.is_main and not args.disable_tqdm,
        ) if args.loss == LTRE else None
        self.wrapped = wrap_model(self.model, ctx)
        self.criterion = ContrastiveLoss(
            args.loss, args.temperature, args.margin, args.cross_batch, args.triplet_negative
        ) if self.ltre is None else None
        self.queue = EmbeddingQueue(args.queue_size) if args.queue_size > 0 else None
        with_momentum = self.queue is not None and args.queue_momentum > 0
        self.momentum = MomentumEncoder(self.model, args.queue_momentum) if with_momentum else None
        self.grad_cache = GradCache(self.encode, args.grad_cache_chunk, ctx.device) if args.grad_cache_chunk else None
        self.optimizer = build_optimizer(self.model, args)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(args.warmup_ratio * self.total_steps), self.total_steps
        )
        self.dtype = autocast_dtype(args.mixed_precision)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.mixed_precision == "fp16")
        self.step, self.position = 0, DataPosition()
        if args.resume_from:
            self.resume(Path(args.resume_from))  # last: it restores the RNG states training continues from

    def encode(self, queries: List[str], passages: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Query and passage embeddings through the (DDP-wrapped) model, under autocast when asked."""
        with torch.autocast(self.ctx.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.wrapped(queries, passages)

    def sync_context(self, sync: bool) -> ContextManager:
        """DDP's no_sync (accumulate gradients locally) unless this backward should all-reduce them."""
        no_sync = getattr(self.wrapped, "no_sync", None)
        return contextlib.nullcontext() if sync or no_sync is None else no_sync()

    def objective(self, batch: Batch) -> Tuple[List[str], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """The passages to embed for `batch` and its loss as a function of (query, passage) embeddings."""
        query_keys = batch.query_keys.to(self.ctx.device)
        if self.ltre is not None:
            return [], lambda queries, _: self.ltre(queries, query_keys)
        passage_keys = batch.passage_keys.to(self.ctx.device)
        owners = batch.passage_owners.to(self.ctx.device)
        queue = self.queue.contents() if self.queue else None
        return batch.passages, lambda queries, passages: self.criterion(
            queries, passages, query_keys, passage_keys, queue, owners
        )

    def micro_step(self, batch: Batch, scale: float, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch (chunked with GradCache); returns its (unscaled) loss."""
        passage_texts, loss_fn = self.objective(batch)

        def backward(loss: torch.Tensor) -> None:
            self.scaler.scale(loss * scale).backward()

        if self.grad_cache is not None:
            loss, _, passages = self.grad_cache(batch.queries, passage_texts, loss_fn, backward,
                                                lambda last: self.sync_context(sync and last))
        else:
            with self.sync_context(sync):
                queries, passages = self.encode(batch.queries, passage_texts)
                loss = loss_fn(queries, passages)
                backward(loss)
        if self.queue is not None:
            keys = self.momentum.embed(batch.passages) if self.momentum else passages.detach()
            self.queue.push(gather_rows(keys)[0], gather_rows(batch.passage_keys.to(self.ctx.device))[0])
        return loss.detach()

    def optimizer_step(self) -> None:
        if self.args.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.momentum is not None:
            self.momentum.update(self.model)

    def state_dict(self, position: DataPosition) -> Dict[str, Any]:
        """Everything besides the weights and RNG that the next step depends on."""
        return {
            "step": self.step,
            "position": dataclasses.asdict(position.normalised(self.batches_per_epoch)),
            "world_size": self.ctx.world_size,
            "batches_per_epoch": self.batches_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "queue": self.queue.contents() if self.queue else None,
            "momentum": self.momentum.model.state_dict() if self.momentum else None,
        }

    def resume(self, path: Path) -> None:
        state = checkpoint.load_state(path, self.ctx)
        if state["batches_per_epoch"] != self.batches_per_epoch:
            raise ValueError(f"{path} was written with {state['batches_per_epoch']} batches per epoch and rank, "
                             f"this launch has {self.batches_per_epoch}: resume with the same triples and batch size")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.queue is not None:
            self.queue.restore(state["queue"])
        if self.momentum is not None:
            self.momentum.model.load_state_dict(state["momentum"])
        self.step, self.position = state["step"], DataPosition(**state["position"])
        checkpoint.restore_rng(state["rng"], self.ctx.device)
        logger.info("resumed %s at step %d (epoch %d, %d batches in)", path, self.step, self.position.epoch,
                    self.position.batches)

    def save(self, path: str, state: Optional[Dict[str, Any]] = None) -> None:
        """The model (rank 0) and, for a checkpoint, the training state and every rank's RNG."""
        if self.ctx.is_main:
            self.model.save(path)
            with open(Path(path) / "tripleminer_train_args.json", "w") as f:
                json.dump(dataclasses.asdict(self.args), f, indent=2, sort_keys=True)
        if state is not None:
            checkpoint.save_state(Path(path), state, self.ctx)
        if self.ctx.is_main:
            logger.info("saved %s to %s", "checkpoint" if state else "model", path)
        barrier()

    def train(self) -> str:
        args, accum = self.args, self.args.gradient_accumulation_steps
        logger.info(
            "training %d steps (%d epochs, %d batches/epoch/rank, %d ranks, %d examples/rank, negatives %s)",
            self.total_steps, self.num_epochs, self.batches_per_epoch, self.ctx.world_size,
            len(self.dataset), self.dataset.mix,
        )
        self.model.train()
        progress = tqdm(total=self.total_steps, initial=self.step, desc="train",
                        disable=args.disable_tqdm or not self.ctx.is_main)
        window = []
        for epoch in range(self.position.epoch, self.num_epochs):
            self.dataset.set_epoch(epoch)
            skip = self.position.batches if epoch == self.position.epoch else 0  # trained on before a resume
            step_loss = torch.zeros((), device=self.ctx.device)
            for i, batch in enumerate(itertools.islice(self.loader, skip, None), start=skip):
                group_start = i - i % accum
                group_size = min(accum, self.batches_per_epoch - group_start)
                last_of_group = i + 1 == group_start + group_size
                step_loss += self.micro_step(batch, 1.0 / group_size, sync=last_of_group) / group_size
                if not last_of_group:
                    continue
                self.optimizer_step()
                self.step += 1
                window.append(step_loss)
                step_loss = torch.zeros((), device=self.ctx.device)
                progress.update(1)
                if self.step % args.logging_steps == 0 or self.step == self.total_steps:
                    mean = sum_across_ranks(torch.stack(window).mean()).item() / self.ctx.world_size
                    window = []
                    progress.set_postfix(loss=f"{mean:.4f}")
                    logger.info("step %d/%d epoch %d loss %.4f lr %.2e", self.step, self.total_steps, epoch, mean,
                                self.scheduler.get_last_lr()[0])
                if args.save_steps > 0 and self.step % args.save_steps == 0 and self.step < self.total_steps:
                    self.save(str(Path(args.output_dir) / f"checkpoint-{self.step}"),
                              self.state_dict(DataPosition(epoch, i + 1)))
                if self.step == self.total_steps:
                    break
        progress.close()
        self.save(args.output_dir)
        return args.output_dir


def run(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments) -> str:
    """Train in this process (one rank of a torchrun launch, or alone) and return the model directory."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = init_distributed(train_args.device)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"%(asctime)s rank{ctx.rank} %(levelname)s %(message)s")
    try:
        seed_everything(train_args.seed, train_args.deterministic)
        return Trainer(model_args, data_args, train_args, ctx).train()
    finally:
        shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(*parse_train_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
