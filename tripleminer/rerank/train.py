"""`tripleminer train-cross-encoder`: fine-tune a cross-encoder on the triples `tripleminer mine` wrote.

Each nested row gives one labeled pair for its positive (label 1) and one per kept negative
(label 0); the model learns P(relevant | query, passage) with binary cross-entropy. The result is a
plain sentence-transformers CrossEncoder directory, which `CrossEncoderDenoise` (or anyone) loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

import tripleminer
from tripleminer.logs import setup_logging
from tripleminer.io.fs import is_local, upload_dir
from tripleminer.schemas.outputs import passage_text
from tripleminer.seeding import stable_rng

log = logging.getLogger(__name__)
POSITIVE = "positive"
SETTINGS_FILE = "tripleminer_cross_encoder.json"


class LabeledPair(NamedTuple):
    query: str
    passage: str
    label: float  # 1.0 relevant, 0.0 not
    source: str  # "positive", or the negative's source (bm25, impression, ...)


@dataclass(frozen=True)
class PairSelection:
    """Which negatives of the shards become label-0 pairs."""

    negative_sources: Optional[Sequence[str]] = None  # None: every source
    negatives_per_positive: Optional[int] = 4  # None: all of a row's negatives
    max_rows: Optional[int] = None  # None: every row
    seed: int = 13


@dataclass(frozen=True)
class TrainSettings:
    model: Optional[str] = None  # backbone: local dir or hub id; None = the bundled all-MiniLM-L6-v2
    max_length: int = 256
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    seed: int = 13
    device: Optional[str] = None  # None: CUDA when available


def read_nested_rows(pattern: str) -> List[Dict[str, Any]]:
    """Rows of the nested Parquet shards matching `pattern` (any Beam filesystem), in file order."""
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise FileNotFoundError(f"no shards match {pattern}")
    rows: List[Dict[str, Any]] = []
    for path in paths:
        with FileSystems.open(path) as f:
            table = pq.read_table(pa.BufferReader(f.read()))
        if "negatives" not in table.schema.names:
            raise ValueError(f"{path}: not a nested shard; mine with --output_format nested to train a cross-encoder")
        rows += table.select(["query_id", "query", "positive", "negatives"]).to_pylist()
    return rows


def labeled_pairs(rows: Iterable[Dict[str, Any]], selection: PairSelection) -> List[LabeledPair]:
    """Positives and selected negatives as labeled pairs, each (query, document) once.

    Rows are sampled and negatives capped with RNGs seeded by (seed, query, positive), so the
    selection does not depend on shard order. Positives are collected first: a document that is a
    positive of a query is never also its negative.
    """
    rows = list(rows)
    if selection.max_rows is not None and len(rows) > selection.max_rows:
        order = sorted(range(len(rows)), key=lambda i: _row_key(rows[i]))
        picked = stable_rng(selection.seed, "ce_rows").choice(len(rows), size=selection.max_rows, replace=False)
        rows = [rows[order[i]] for i in sorted(picked)]
    wanted = set(selection.negative_sources) if selection.negative_sources is not None else None
    pairs: List[LabeledPair] = []
    seen = set()
    for row in rows:
        key = (row["query_id"], row["positive"]["doc_id"])
        if key not in seen:
            seen.add(key)
            pairs.append(LabeledPair(row["query"], passage_text(row["positive"]), 1.0, POSITIVE))
    for row in rows:
        negatives = [n for n in row["negatives"] if wanted is None or n["source"] in wanted]
        cap = selection.negatives_per_positive
        if cap is not None and len(negatives) > cap:
            rng = stable_rng(selection.seed, "ce_negatives", *_row_key(row))
            negatives = [negatives[i] for i in sorted(rng.choice(len(negatives), size=cap, replace=False))]
        for n in negatives:
            key = (row["query_id"], n["doc_id"])
            if key not in seen:
                seen.add(key)
                pairs.append(LabeledPair(row["query"], passage_text(n), 0.0, n["source"]))
    return pairs


def _row_key(row: Dict[str, Any]) -> tuple:
    return row["query_id"], row["positive"]["doc_id"]


def train_cross_encoder(pairs: Sequence[LabeledPair], output_dir: str, settings: TrainSettings) -> Dict[str, Any]:
    """Fine-tune a one-logit CrossEncoder on `pairs`, save it to `output_dir`; returns the run's summary."""
    import transformers
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from tripleminer.trainer.model import resolve_model

    if not pairs or len({p.label for p in pairs}) < 2:
        raise ValueError("need both positive and negative pairs to train a cross-encoder")
    start = time.perf_counter()
    transformers.set_seed(settings.seed)  # the new classification head's initial weights
    backbone = resolve_model(settings.model)
    model = CrossEncoder(
        backbone, num_labels=1, max_length=settings.max_length, trust_remote_code=False, device=settings.device
    )
    data = Dataset.from_dict(
        {"query": [p.query for p in pairs], "passage": [p.passage for p in pairs], "label": [p.label for p in pairs]}
    )
    with tempfile.TemporaryDirectory(prefix="tripleminer-ce-") as scratch:
        args = CrossEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_ratio=settings.warmup_ratio,
            seed=settings.seed,
            data_seed=settings.seed,
            use_cpu=settings.device == "cpu",
            save_strategy="no",
            report_to="none",
            logging_steps=50,
            disable_tqdm=True,
        )
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model))
        trainer.train()
        local = output_dir if is_local(output_dir) else os.path.join(scratch, "model")
        model.save_pretrained(local)
        summary = {
            "tripleminer_version": tripleminer.__version__,
            "backbone": backbone,
            "settings": asdict(settings),
            "pairs": dict(sorted(Counter(p.source for p in pairs).items())),
            "train_seconds": round(time.perf_counter() - start, 1),
        }
        with open(os.path.join(local, SETTINGS_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        if not is_local(output_dir):
            upload_dir(local, output_dir)
    return summary


def _optional_int(value: str) -> Optional[int]:
    return None if value.lower() in ("all", "none") else int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripleminer train-cross-encoder",
        description="Fine-tune a cross-encoder (P(relevant | query, passage)) on nested triples from `tripleminer mine`: "
                    "each row's positive is a label-1 pair, its selected negatives label-0 pairs. "
                    "The saved directory is what `tripleminer mine --cross_encoder DIR` scores with.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("data")
    io.add_argument("--train_data", required=True,
                    help="File pattern of nested Parquet shards written by `tripleminer mine --output_format nested`, e.g. 'out/triples-*.parquet' (any Beam filesystem).")
    io.add_argument("--output_dir", required=True,
                    help="Where to save the CrossEncoder directory (local or any Beam filesystem); also gets tripleminer_cross_encoder.json with the settings and pair counts.")
    io.add_argument("--negative_sources", default=None,
                    help="Comma-separated negative sources to train on (e.g. 'bm25,impression'); default every source in the shards. "
                         "Hard sources (bm25) teach fine distinctions; easy ones (random) mostly calibrate.")
    io.add_argument("--negatives_per_positive", type=_optional_int, default=4,
                    help="At most this many negatives per row, a seeded sample of the selected sources ('all' for no cap). "
                         "Fewer negatives per positive keep the classes closer to balanced, which keeps probabilities near 0.5 meaningful.")
    io.add_argument("--max_rows", type=_optional_int, default=None,
                    help="Train on a seeded sample of this many rows ('all' or unset: every row); for quick runs.")
    model = parser.add_argument_group("model and training")
    model.add_argument("--model", default=None,
                       help="Backbone: a local directory or Hugging Face hub id. Default: the bundled all-MiniLM-L6-v2 (a new one-logit head is added).")
    model.add_argument("--max_length", type=int, default=256,
                       help="Tokens per (query, passage) pair; longer pairs are truncated. Cost grows about linearly with it.")
    model.add_argument("--epochs", type=float, default=3.0,
                       help="Passes over the pairs. A new head needs a few hundred optimisation steps before scores move off the class prior; "
                            "on SciFact's ~3,700 pairs one epoch of batch 16 is not enough, three are.")
    model.add_argument("--batch_size", type=int, default=16, help="Pairs per optimisation step.")
    model.add_argument("--learning_rate", type=float, default=5e-5, help="Peak AdamW learning rate (linear decay).")
    model.add_argument("--warmup_ratio", type=float, default=0.1, help="Fraction of steps spent warming the learning rate up.")
    model.add_argument("--seed", type=int, default=13, help="Seed of the pair sample, the new head's initialisation and the data order.")
    model.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1, mps); default CUDA when available.")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    sources = [s.strip() for s in a.negative_sources.split(",") if s.strip()] if a.negative_sources else None
    selection = PairSelection(sources, a.negatives_per_positive, a.max_rows, a.seed)
    settings = TrainSettings(a.model, a.max_length, a.epochs, a.batch_size, a.learning_rate, a.warmup_ratio, a.seed, a.device)
    pairs = labeled_pairs(read_nested_rows(a.train_data), selection)
    log.info("training on %d pairs %s", len(pairs), dict(Counter(p.source for p in pairs)))
    summary = train_cross_encoder(pairs, a.output_dir, settings)
    log.info("saved cross-encoder to %s in %.1fs", a.output_dir, summary["train_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
