"""The quality matrix's training and evaluation on a GPU machine that has no Beam, no ranx and no network.

Mining stays on the CPU box (it needs Beam, faiss and bm25s); the GPU trains and retrieves; ranx scores
back here. Three steps, each a sub-command:

    # 1. here: mine every cell's rows (quality_matrix.py --mine_only, once per --best_mix tried), then pack them
    python benchmarks/quality_matrix.py --mine_only --datasets scifact nfcorpus --rows in-batch peer tripleminer-default --seeds 13 14 15
    python benchmarks/quality_matrix_device.py pack --bundle .devbundle --recipes st ours
    # 2. on the GPU machine (the bundle travels as one .tar.xz and an fp16 copy of the model):
    python benchmarks/quality_matrix_device.py run --bundle /tmp/bundle --model .devbundle/model --out $OUT --workers 4
    # 3. here: score the returned runs with ranx and append the cells to a results file of that device's own
    python benchmarks/quality_matrix_device.py score --runs FILES_AT --results benchmarks/results/quality_matrix_h200.json
    python benchmarks/quality_matrix.py --table_only --results benchmarks/results/quality_matrix_h200.json

The bundle holds each dataset's corpus, queries and test qrels, and every mined cell's nested rows with
their texts blanked (ids, sources, ranks and scores kept): the GPU side fills the texts back in from the
corpus and the queries (`pack` checks that this gives back exactly the texts mined, and refuses to pack
otherwise). The model travels as fp16 weights (half of fp32's 87 MB, so a bundle fits the device's 64 MiB
transfer); training runs in fp32 master weights upcast from them, which shifts the start point by fp16
rounding (about 2e-4 of a weight), the same for every row, and the zero-shot cell measures that start.
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import multiprocessing as mp
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

import quality_matrix as qm
from tripleminer.logs import setup_logging
from tripleminer.schemas.outputs import passage_text
from tripleminer.encoders import default_model
from tripleminer.trainer.evaluate import followed, load_qrels, read_corpus, read_queries, retrieve
from tripleminer.trainer.model import set_max_seq_length

log = logging.getLogger("quality_matrix_device")

BUNDLE_TAR = "bundle.tar.xz"
CELLS = "cells.json"
SPLIT_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
RUN_DIGITS = 5  # cosines kept in the returned runs (ranks and metrics unchanged at this precision)
Record = Dict[str, Any]


# ---------------------------------------------------------------- texts out, texts back


def strip_texts(table: pa.Table) -> pa.Table:
    """Nested rows with every query and passage text blanked (title null, text ""): ids, sources, ranks
    and scores stay, so the rows weigh a few KB and `fill_texts` restores them from the corpus."""
    rows = table.to_pylist()
    for row in rows:
        row["query"] = ""
        for passage in [row["positive"], *row["negatives"]]:
            passage.update(title=None, text="")
    return pa.Table.from_pylist(rows, schema=table.schema)


def fill_texts(table: pa.Table, queries: Dict[str, str], corpus: Dict[str, str]) -> pa.Table:
    """The inverse of `strip_texts`: query texts by query id, passages by doc id as the corpus's
    title-joined text (title null), which is what every consumer reads through `passage_text`."""
    rows = table.to_pylist()
    for row in rows:
        row["query"] = queries[row["query_id"]]
        for passage in [row["positive"], *row["negatives"]]:
            passage.update(title=None, text=corpus[passage["doc_id"]])
    return pa.Table.from_pylist(rows, schema=table.schema)


def texts_of(table: pa.Table) -> List[Tuple[str, ...]]:
    """Every row's query and passage texts as a model sees them."""
    return [(r["query"], passage_text(r["positive"]), *map(passage_text, r["negatives"])) for r in table.to_pylist()]


# ---------------------------------------------------------------- pack (here)


def mined_cells(root: Path, datasets: Sequence[str], rows: Sequence[str], seeds: Sequence[int]) -> Iterator[Record]:
    """Every mined cell under quality_matrix's root (--work_dir/full, or /quick), as {dataset, row, seed,
    best_spec, meta, path}."""
    for meta_path in sorted(root.glob("*/seed*/*/**/mined.json")):
        parts = meta_path.relative_to(root).parts
        dataset, seed, row = parts[0], int(parts[1].removeprefix("seed")), parts[2]
        if dataset not in datasets or row not in rows or seed not in seeds:
            continue
        meta = json.loads(meta_path.read_text())
        asked = meta.get("asked", {})
        spec = (qm.best_spec(argparse.Namespace(best_mix=asked["negatives"], best_mine_args=asked.get("mine_args", "")))
                if row == "tripleminer-best" else None)
        yield {"dataset": dataset, "row": row, "seed": seed, "best_spec": spec, "meta": meta, "path": meta_path.parent / "train.parquet"}


def pack(args: argparse.Namespace) -> None:
    bundle = Path(args.bundle)
    stage = bundle / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "rows").mkdir(parents=True)
    qm_args = qm.parse_args(["--datasets", *args.datasets, "--work_dir", args.work_dir] + (["--quick"] if args.quick else []))
    settings = {"ours_epochs": args.ours_epochs, "ours_lr": args.ours_lr, "ours_mixed_precision": args.ours_mixed_precision,
                "eval_max_seq_length": args.eval_max_seq_length, "quick": args.quick}
    cells, data_info, texts = [], {}, {}
    for i, cell in enumerate(mined_cells(qm.root(qm_args), args.datasets, args.rows, args.seeds)):
        name = cell["dataset"]
        if name not in data_info:
            data = qm.load_dataset(name, qm_args)
            data_info[name] = qm.data_info(data, qm_args)
            texts[name] = (read_queries(data.path / "queries.jsonl"), read_corpus(data.path / "corpus.jsonl"))
            for rel in SPLIT_FILES:
                (stage / "data" / name / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(followed(data.path / rel), stage / "data" / name / rel)
        table = pq.read_table(cell["path"])
        stripped = strip_texts(table)
        if texts_of(fill_texts(stripped, *texts[name])) != texts_of(table):
            raise SystemExit(f"{cell['path']}: its texts are not the corpus's and the queries' own; cannot pack it by ids")
        rows_file = f"rows/{i:04d}.parquet"
        pq.write_table(stripped, stage / rows_file, compression="zstd")
        meta = cell["meta"]
        for recipe in args.recipes:
            cells.append({"dataset": name, "row": cell["row"], "recipe": recipe, "seed": cell["seed"], "best_spec": cell["best_spec"],
                          "mix": meta["mix"], "rows": meta["rows"], "mine_s": meta["mine_s"], "mined": meta["info"], "rows_file": rows_file,
                          "data": data_info[name], "settings": settings})
    if not cells:
        raise SystemExit(f"no mined cells under {args.work_dir} for {args.datasets} {args.rows} seeds {args.seeds}: "
                         "run quality_matrix.py --mine_only first")
    if not args.no_zero_shot:
        cells += [{"dataset": name, "row": "zero-shot", "recipe": qm.NO_RECIPE, "seed": None, "best_spec": None,
                   "data": info, "settings": settings} for name, info in data_info.items()]
    (stage / CELLS).write_text(json.dumps(cells, indent=1) + "\n")
    with tarfile.open(bundle / BUNDLE_TAR, "w:xz") as tar:
        tar.add(stage, arcname=".")
    shutil.rmtree(stage)
    if not args.no_model:
        save_fp16(args.model or default_model(), bundle / "model")
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    log.info("packed %d cells (%d datasets) into %s: %.1f MB with the model", len(cells), len(data_info), bundle, size / 2**20)


def save_fp16(model: str, out: Path) -> None:
    """The model with fp16 weights (sentence-transformers folder): half the bytes, for the device transfer."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu").to(torch.float16)
    st.save_pretrained(str(out))


# ---------------------------------------------------------------- run (on the GPU machine)


def cell_id(cell: Record) -> str:
    spec = f"-{qm.spec_tag(cell['best_spec'])}" if cell.get("best_spec") else ""
    return f"{cell['dataset']}-{cell['row']}{spec}-{cell['recipe']}-seed{cell['seed']}"


def run_cell(cell: Record, bundle: Path, work: Path, args: argparse.Namespace, cache: Dict[str, Any]) -> Record:
    """Train (st or ours) and retrieve one cell on the GPU; returns the cell with its run and training details."""
    import torch

    name = cell["dataset"]
    if name not in cache:
        data = bundle / "data" / name
        cache[name] = (read_queries(data / "queries.jsonl"), read_corpus(data / "corpus.jsonl"), load_qrels(data / "qrels" / "test.tsv"))
    queries, corpus, test_qrels = cache[name]
    settings = cell["settings"]
    qm_args = qm.parse_args(["--device", args.device, "--model", args.model, *(["--quick"] if settings["quick"] else []), "--ours_epochs", str(settings["ours_epochs"]),
                             "--ours_lr", str(settings["ours_lr"]), "--ours_mixed_precision", settings["ours_mixed_precision"],
                             "--eval_max_seq_length", str(settings["eval_max_seq_length"]), "--eval_batch_size", str(args.eval_batch_size)])
    out = work / cell_id(cell)
    details: Record = {}
    start = time.perf_counter()
    model_path = args.model
    if cell["row"] != "zero-shot":
        rows = fill_texts(pq.read_table(bundle / cell["rows_file"]), queries, corpus)
        out.mkdir(parents=True, exist_ok=True)
        qm.write_rows(rows, out / "train.parquet", cell["seed"])
        mined = qm.Mined(out / "train.parquet", cell["mix"], cell["rows"], cell["mine_s"], cell["mined"])
        details = (qm.train_st if cell["recipe"] == "st" else qm.train_ours)(mined, out / "model", cell["seed"], qm_args)
        model_path = str(out / "model")
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=args.device)
    set_max_seq_length(model, qm.eval_max_len(qm_args))
    test_queries = {q: queries[q] for q in test_qrels}
    with torch.no_grad():
        run = retrieve(model, test_queries, corpus, 100, args.eval_batch_size)
    shutil.rmtree(out, ignore_errors=True)  # the model is not coming back; keep the machine's disk free
    run = {q: {d: round(s, RUN_DIGITS) for d, s in docs.items()} for q, docs in run.items()}
    return {**cell, **details, "train_s": round(train_s, 2), "eval_s": round(time.perf_counter() - start, 2),
            "device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "run": run}


def worker(index: int, cells: List[Record], args: argparse.Namespace) -> None:
    """One process's share of the cells: each cell's result is appended to the worker's file as an xz
    stream of its own, so a run stopped at its time limit still returns every finished cell."""
    import torch

    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
    bundle, cache = Path(args.bundle), {}
    for cell in cells:
        try:
            result = run_cell(cell, bundle, Path(args.work_dir) / f"w{index}", args, cache)
        except Exception as err:  # one failed cell (say st without `datasets`) must not lose the others
            log.exception("%s failed", cell_id(cell))
            result = {**cell, "device": args.device, "error": f"{type(err).__name__}: {err}"}
        with lzma.open(Path(args.out) / f"runs-{index}.jsonl.xz", "at", encoding="utf8") as f:
            f.write(json.dumps(result) + "\n")
        log.info("%s: %s", cell_id(cell), result.get("error") or f"train {result['train_s']:.0f} s, eval {result['eval_s']:.0f} s")


def restore_fp32(model: str, out: Path) -> str:
    """The packed fp16 model as an fp32 folder (loaded as saved it would train and encode in fp16)."""
    import torch
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(model, device="cpu").to(torch.float32).save_pretrained(str(out))
    return str(out)


def run(args: argparse.Namespace) -> None:
    cells = json.loads((Path(args.bundle) / CELLS).read_text())
    args.model = restore_fp32(args.model, Path(args.work_dir) / "model-fp32")
    if args.only:
        cells = [c for c in cells if any(part in cell_id(c) for part in args.only)]
    # the matrix's own rows before the mixes tried (a run stopped at its limit keeps those), longest first within
    cells.sort(key=lambda c: (c["row"] == "tripleminer-best", c["dataset"] != "nfcorpus", c["recipe"] != "ours"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    shares = [cells[i::args.workers] for i in range(args.workers)]
    log.info("%d cells on %d workers", len(cells), args.workers)
    procs = [mp.get_context("spawn").Process(target=worker, args=(i, share, args)) for i, share in enumerate(shares) if share]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


# ---------------------------------------------------------------- score (here)


def score(args: argparse.Namespace) -> None:
    """ranx metrics of the returned runs, appended to --results as quality_matrix cells of the device they ran on."""
    from tripleminer.trainer.evaluate import score as ranx_score

    results = Path(args.results)
    records = qm.load_results(results)
    done = {qm.cell_key(r) for r in records}
    devices = {r["settings"].get("device", "cpu") for r in records}
    qrels: Dict[Tuple[str, bool], Dict[str, Dict[str, int]]] = {}
    added = failed = 0
    for path in sorted(Path(args.runs).glob("runs-*.jsonl.xz")):
        with lzma.open(path, "rt", encoding="utf8") as f:
            for line in f:
                cell = json.loads(line)
                if "error" in cell:
                    failed += 1
                    log.warning("%s failed on the device: %s", cell_id(cell), cell["error"])
                    continue
                if devices - {cell["device"]}:
                    raise SystemExit(f"{results} holds cells of another device ({', '.join(sorted(devices))}) than "
                                     f"{cell['device']}: give a results file of this device's cells")
                name, quick = cell["dataset"], cell["settings"]["quick"]
                if (name, quick) not in qrels:  # the test split pack read: the --quick slice or the whole dataset
                    qm_args = qm.parse_args(["--work_dir", args.work_dir] + (["--quick"] if quick else []))
                    qrels[name, quick] = qm.load_dataset(name, qm_args).test.qrels
                record = {k: v for k, v in cell.items() if k not in ("run", "rows_file", "rows", "best_spec", "device")}
                record.update(quick=quick, **({"best_spec": cell["best_spec"]} if cell["best_spec"] else {}))
                record.setdefault("mine_s", 0.0)
                record.update(ranx_score(qrels[name, quick], cell["run"]))
                record["settings"] = {**cell["settings"], "eval_bf16": False, "device": cell["device"]}
                if qm.cell_key(record) in done:
                    continue
                records.append(record)
                done.add(qm.cell_key(record))
                devices.add(cell["device"])
                added += 1
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    log.info("%d cells added to %s (%d failed on the device)", added, results, failed)


# ---------------------------------------------------------------- command line


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: bundle the mined cells, the test splits and an fp16 model for the GPU machine",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default=".devbundle", help="folder the bundle is written to (bundle.tar.xz, model/)")
    p.add_argument("--work_dir", default="work/quality_matrix", help="quality_matrix.py's --work_dir holding the mined cells")
    p.add_argument("--datasets", nargs="+", choices=qm.DATASETS, default=list(qm.DATASETS), help="datasets whose mined cells are packed")
    p.add_argument("--rows", nargs="+", choices=[r for r in qm.ROWS if r != "zero-shot"], default=[r for r in qm.ROWS if r != "zero-shot"],
                   help="rows whose mined cells are packed (every tripleminer-best spec mined is packed)")
    p.add_argument("--seeds", nargs="+", type=int, default=[13, 14, 15], help="seeds whose mined cells are packed")
    p.add_argument("--recipes", nargs="+", choices=qm.RECIPES, default=list(qm.RECIPES), help="recipes each mined cell trains with")
    p.add_argument("--no_zero_shot", action="store_true", help="leave out the zero-shot cell of each dataset")
    p.add_argument("--ours_epochs", type=int, default=3, help="ours: --num_epochs (quality_matrix.py's --ours_epochs)")
    p.add_argument("--ours_lr", type=float, default=5e-5, help="ours: --learning_rate (quality_matrix.py's --ours_lr)")
    p.add_argument("--ours_mixed_precision", choices=("no", "bf16"), default="bf16", help="ours: autocast on the GPU")
    p.add_argument("--eval_max_seq_length", type=int, default=256, help="evaluation truncation (MiniLM's own)")
    p.add_argument("--quick", action="store_true", help="pack quality_matrix.py --quick cells (a plumbing check)")
    p.add_argument("--model", default=None, help="model to pack (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--no_model", action="store_true", help="pack no model (the device has one)")
    r = sub.add_parser("run", help="on the GPU machine: train and retrieve every packed cell",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--bundle", required=True, help="the unpacked bundle.tar.xz")
    r.add_argument("--model", required=True, help="the model folder every cell starts from (the packed fp16 copy)")
    r.add_argument("--out", required=True, help="where runs-<worker>.jsonl.xz go")
    r.add_argument("--work_dir", default="/tmp/qm_work", help="scratch: filled rows and models, deleted per cell")
    r.add_argument("--workers", type=int, default=4, help="processes sharing the GPU, each taking every Nth cell")
    r.add_argument("--eval_batch_size", type=int, default=256, help="texts per encoding batch of the evaluation")
    r.add_argument("--device", default="cuda", help="cuda; cpu runs the same steps here (a plumbing check of a --quick bundle)")
    r.add_argument("--only", nargs="+", default=None, help="run only cells whose id contains one of these")
    s = sub.add_parser("score", help="here: ranx metrics of the returned runs, appended to a results file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--runs", required=True, help="folder of runs-*.jsonl.xz from `run`")
    s.add_argument("--work_dir", default="work/quality_matrix", help="quality_matrix.py's --work_dir the cells were packed from")
    s.add_argument("--results", default="benchmarks/results/quality_matrix_h200.json", help="results file of GPU cells")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    {"pack": pack, "run": run, "score": score}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
