"""Training driver: `python -m tripleminer.trainer.train`, or under `torchrun --nproc_per_node N -m ...` for N ranks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from tripleminer.trainer.arguments import DataArguments, ModelArguments, TrainingArguments, parse_train_args
from tripleminer.trainer.data import Batch, NegativeMix, TripleStream, collate, list_row_groups
from tripleminer.trainer.distributed import (
    DistContext,
    barrier,
    gather_rows,
    init_distributed,
    shutdown,
    sum_across_ranks,
    wrap_model,
)
from tripleminer.trainer.losses import ContrastiveLoss
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
        self.dataset = TripleStream(
            list_row_groups(data_args.triples),
            NegativeMix.parse(data_args.negatives),
            seed=args.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            shuffle_buffer=data_args.shuffle_buffer,
        )
        self.loader = DataLoader(
            self.dataset, batch_size=args.batch_size, collate_fn=collate, num_workers=data_args.num_workers
        )
        self.batches_per_epoch = self.dataset.batches_per_epoch(args.batch_size, data_args.num_workers)
        if self.batches_per_epoch == 0:
            raise ValueError(f"no training rows for rank {ctx.rank}: {len(self.dataset)} rows per rank")
        steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        self.total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_epochs
        self.num_epochs = math.ceil(self.total_steps / steps_per_epoch)

        self.model = DualEncoder.from_pretrained(
            model_args.model_name_or_path,
            separate_towers=model_args.separate_towers,
            max_seq_length=model_args.max_seq_length,
            device=ctx.device,
        )
        self.wrapped = wrap_model(self.model, ctx)
        self.criterion = ContrastiveLoss(args.loss, args.temperature, args.margin, args.cross_batch)
        self.queue = EmbeddingQueue(args.queue_size) if args.queue_size > 0 else None
        with_momentum = self.queue is not None and args.queue_momentum > 0
        self.momentum = MomentumEncoder(self.model, args.queue_momentum) if with_momentum else None
        self.optimizer = build_optimizer(self.model, args)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(args.warmup_ratio * self.total_steps), self.total_steps
        )
        self.dtype = autocast_dtype(args.mixed_precision)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.mixed_precision == "fp16")

    def micro_step(self, batch: Batch, scale: float, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its (unscaled) loss."""
        no_sync = getattr(self.wrapped, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync():
            with torch.autocast(self.ctx.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                queries, passages = self.wrapped(batch.queries, batch.passages)
            query_keys = batch.query_keys.to(self.ctx.device)
            passage_keys = batch.passage_keys.to(self.ctx.device)
            queue = self.queue.contents() if self.queue else None
            loss = self.criterion(queries, passages, query_keys, passage_keys, queue)
            self.scaler.scale(loss * scale).backward()
        if self.queue is not None:
            keys = self.momentum.embed(batch.passages) if self.momentum else passages.detach()
            self.queue.push(gather_rows(keys)[0], gather_rows(passage_keys)[0])
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

    def save(self, path: str) -> None:
        if self.ctx.is_main:
            self.model.save(path)
            with open(Path(path) / "tripleminer_train_args.json", "w") as f:
                json.dump(dataclasses.asdict(self.args), f, indent=2, sort_keys=True)
            logger.info("saved model to %s", path)
        barrier()

    def train(self) -> str:
        args, accum = self.args, self.args.gradient_accumulation_steps
        logger.info(
            "training %d steps (%d epochs, %d batches/epoch/rank, %d ranks, %d examples/rank, negatives %s)",
            self.total_steps, self.num_epochs, self.batches_per_epoch, self.ctx.world_size,
            len(self.dataset), self.dataset.mix,
        )
        self.model.train()
        progress = tqdm(total=self.total_steps, disable=args.disable_tqdm or not self.ctx.is_main, desc="train")
        step, window = 0, []
        for epoch in range(self.num_epochs):
            self.dataset.set_epoch(epoch)
            step_loss = torch.zeros((), device=self.ctx.device)
            for i, batch in enumerate(self.loader):
                group_start = i - i % accum
                group_size = min(accum, self.batches_per_epoch - group_start)
                last_of_group = i + 1 == group_start + group_size
                step_loss += self.micro_step(batch, 1.0 / group_size, sync=last_of_group) / group_size
                if not last_of_group:
                    continue
                self.optimizer_step()
                step += 1
                window.append(step_loss)
                step_loss = torch.zeros((), device=self.ctx.device)
                progress.update(1)
                if step % args.logging_steps == 0 or step == self.total_steps:
                    mean = sum_across_ranks(torch.stack(window).mean()).item() / self.ctx.world_size
                    window = []
                    progress.set_postfix(loss=f"{mean:.4f}")
                    logger.info("step %d/%d epoch %d loss %.4f lr %.2e", step, self.total_steps, epoch, mean,
                                self.scheduler.get_last_lr()[0])
                if args.save_steps > 0 and step % args.save_steps == 0 and step < self.total_steps:
                    self.save(str(Path(args.output_dir) / f"checkpoint-{step}"))
                if step == self.total_steps:
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
