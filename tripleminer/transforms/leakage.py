"""The evaluation-leakage guard (`--exclude_eval`): nothing of a benchmark's queries or judged
documents reaches the training triples.

Evaluation files are read by this guard only (at pipeline construction, in plain Python: they are
small), never used as training data. What they give:

- evaluation queries, whose texts are matched against every training query: normalised text equal
  (`query_exact_duplicate_of_eval`) or MinHash Jaccard of word sets >= `--leak_jaccard` through an
  LSH index of the evaluation queries (`query_near_duplicate_of_eval`). Such a training query is
  dropped whole, before its candidates are retrieved.
- judged-relevant documents (qrels score > 0) of the evaluation queries. A training row whose
  POSITIVE is one is dropped (`positive_judged_for_eval`): training on it teaches the model the
  benchmark's answers. Such a document is also never a NEGATIVE (`negative_judged_for_eval`): it
  is removed from every source's candidate lists before sampling, so the row keeps its full count
  from the other candidates; the (query, positive) pair is clean, and dropping the whole row would
  throw away a large share of rows on corpora where the benchmark's documents are a sizeable part
  of the corpus (SciFact: 339 of 5,183, 6.5%; were 7 negatives drawn uniformly, 1 - 0.935^7 = 37%
  of the rows would hold one).
  `--exclude_eval_docs positives` checks positives only, `none` neither.

Every drop is counted under `leakage/` and written to `OUTPUT/leakage-*.jsonl` with the matching
evaluation items (dataset, query id, query text, and the Jaccard or the qrels score).

Accepted `--exclude_eval` values (repeatable; any Beam filesystem):
- a BEIR dataset folder: the queries judged in its `qrels/test.tsv` (BEIR's evaluation split; pass
  a qrels file for another split) and their judged documents;
- a qrels file (BEIR TSV, or JSONL/Parquet with query_id, doc_id, score): its judged documents,
  and, in the BEIR layout (`DATASET/qrels/SPLIT.tsv` beside `DATASET/queries.jsonl`), the texts of
  the queries it judges;
- a queries file (BEIR JSONL or Parquet): all of its queries (so not a dataset's whole
  `queries.jsonl` when that holds its training queries too).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer import minhash
from tripleminer.io.readers import InputError, input_format, matched_files
from tripleminer.schemas.inputs import InvalidRecord, validate_qrel, validate_query
from tripleminer.transforms.near_duplicates import CachedSide, drop_docs

NAMESPACE = "leakage"
REPORT_PREFIX = "leakage"
EVAL_DOCS = ("all", "positives", "none")
# Measured on SciFact (benchmarks/leakage_audit.py): copies of test queries with one or two edited
# words keep a word-set Jaccard >= 0.57, 95% of them >= 0.75; unrelated claims stay below 0.5.
DEFAULT_LEAK_JACCARD = 0.6
QUERY_EXACT, QUERY_NEAR = "query_exact_duplicate_of_eval", "query_near_duplicate_of_eval"
POSITIVE_JUDGED, NEGATIVE_JUDGED = "positive_judged_for_eval", "negative_judged_for_eval"
BEIR_EVAL_SPLIT = "test"


@dataclass(frozen=True)
class EvalFiles:
    """One `--exclude_eval` value, resolved to files."""

    name: str  # the value as given (reported with every match)
    queries: Tuple[str, ...] = ()  # query files
    qrels: Tuple[str, ...] = ()  # qrels files
    restrict_to_judged: bool = False  # only the queries the qrels judge (BEIR dataset layout)


@dataclass(frozen=True)
class LeakageSettings:
    sources: Tuple[EvalFiles, ...]
    jaccard: float = DEFAULT_LEAK_JACCARD
    docs: str = "all"  # all | positives | none

    @property
    def check_negatives(self) -> bool:
        return self.docs == "all"

    @property
    def check_positives(self) -> bool:
        return self.docs in ("all", "positives")


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001 - a filesystem that cannot answer is a missing file here
        return False


def _first_record(path: str) -> Dict[str, Any]:
    if input_format([path], "exclude_eval") == "parquet":
        with FileSystems.open(path) as f:
            rows = pq.read_table(f).slice(0, 1).to_pylist()
        return rows[0] if rows else {}
    for line in _lines(path):
        if line.strip():
            return json.loads(line)
    return {}


def _is_qrels(path: str) -> bool:
    fmt = input_format([path], "exclude_eval")
    if fmt == "tsv":
        return True
    try:
        first = _first_record(path)
    except ValueError as err:
        raise InputError(f"--exclude_eval: {path}: {err}") from err
    return isinstance(first, dict) and ("corpus-id" in first or "doc_id" in first)


def _beir_queries_of(qrels_path: str) -> Optional[str]:
    """DATASET/queries.jsonl for DATASET/qrels/SPLIT.tsv, if it exists."""
    folder = posixpath.dirname(qrels_path)
    if posixpath.basename(folder) != "qrels":
        return None
    candidate = posixpath.join(posixpath.dirname(folder), "queries.jsonl")
    return candidate if _exists(candidate) else None


def resolve_eval(patterns: Sequence[str]) -> Tuple[EvalFiles, ...]:
    """`--exclude_eval` values -> files; InputError names the value that matches nothing usable."""
    out = []
    for pattern in patterns:
        beir_queries = FileSystems.join(pattern, "queries.jsonl")
        if _exists(beir_queries):
            qrels = FileSystems.join(pattern, "qrels", f"{BEIR_EVAL_SPLIT}.tsv")
            if not _exists(qrels):
                raise InputError(f"--exclude_eval {pattern}: a BEIR folder without qrels/{BEIR_EVAL_SPLIT}.tsv; pass the qrels file of its evaluation split")
            out.append(EvalFiles(pattern, (beir_queries,), (qrels,), restrict_to_judged=True))
            continue
        queries, qrels = [], []
        for path in matched_files(pattern, "exclude_eval"):
            (qrels if _is_qrels(path) else queries).append(path)
        beir = sorted({q for q in (_beir_queries_of(p) for p in qrels) if q})
        restrict = bool(beir) and not queries
        out.append(EvalFiles(pattern, tuple(queries or beir), tuple(qrels), restrict_to_judged=restrict))
    return tuple(out)


def _lines(path: str) -> Iterator[str]:
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        for raw in f:
            yield raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")


def _records(path: str, kind: str) -> Iterator[Dict[str, Any]]:
    """Raw records of a queries or qrels file (JSONL, TSV for qrels, Parquet)."""
    fmt = input_format([path], "exclude_eval")
    if fmt == "parquet":
        with FileSystems.open(path) as f:
            yield from pq.read_table(f).to_pylist()
        return
    for line in _lines(path):
        if not line.strip():
            continue
        if fmt == "tsv":
            cols = line.split("\t")
            if cols[0].lower() in ("query-id", "query_id", "qid"):
                continue
            if len(cols) == 4:  # TREC: query, iteration, doc, score
                cols = [cols[0], cols[2], cols[3]]
            yield dict(zip(("query_id", "doc_id", "score"), cols)) if len(cols) == 3 else {}
        else:
            yield json.loads(line)


@dataclass
class EvalSet:
    """What the guard knows of the evaluation sets: their queries and judged-relevant documents."""

    queries: List[Dict[str, str]]  # {"dataset", "query_id", "query"}
    judged: Dict[str, List[Dict[str, Any]]]  # doc_id -> [{"dataset", "query_id", "query", "score"}]
    invalid_records: int = 0


def load_eval(sources: Sequence[EvalFiles]) -> EvalSet:
    """Read the evaluation files (invalid records are counted, not fatal)."""
    queries: List[Dict[str, str]] = []
    judged: Dict[str, List[Dict[str, Any]]] = {}
    invalid = 0
    for src in sources:
        pairs = []
        for path in src.qrels:
            for rec in _records(path, "qrels"):
                try:
                    pairs.append(validate_qrel(rec))
                except InvalidRecord:
                    invalid += 1
        judged_ids = {p["query_id"] for p in pairs}
        texts: Dict[str, str] = {}
        for path in src.queries:
            for rec in _records(path, "queries"):
                try:
                    q = validate_query(rec)
                except InvalidRecord:
                    invalid += 1
                    continue
                if not src.restrict_to_judged or q["query_id"] in judged_ids:
                    texts.setdefault(q["query_id"], q["text"])
        queries += [{"dataset": src.name, "query_id": qid, "query": text} for qid, text in sorted(texts.items())]
        for p in sorted(pairs, key=lambda p: (p["doc_id"], p["query_id"])):
            if p["score"] > 0:
                judged.setdefault(p["doc_id"], []).append(
                    {"dataset": src.name, "query_id": p["query_id"], "query": texts.get(p["query_id"]), "score": p["score"]})
    return EvalSet(queries, judged, invalid)


class _EvalIndex:
    """The evaluation queries by normalised text and in an LSH index, built once per worker."""

    def __init__(self, eval_set: EvalSet, threshold: float) -> None:
        self.by_text: Dict[str, List[Dict[str, str]]] = {}
        for q in eval_set.queries:
            self.by_text.setdefault(minhash.normalise(q["query"]), []).append(q)
        self.queries = eval_set.queries
        self.lsh = minhash.build_index(((i, minhash.signature(q["query"], minhash.QUERY_SHINGLE)) for i, q in enumerate(self.queries)),
                                       threshold)

    def match(self, text: str) -> Tuple[Optional[str], List[Dict[str, Any]]]:
        """(reason, matching evaluation queries) of a training query text; (None, []) when clean."""
        exact = self.by_text.get(minhash.normalise(text))
        if exact:
            return QUERY_EXACT, [{**q, "jaccard": 1.0} for q in exact]
        near = self.lsh.query(minhash.signature(text, minhash.QUERY_SHINGLE))
        if near:
            return QUERY_NEAR, [{**self.queries[i], "jaccard": round(j, 4)} for i, j in near]
        return None, []


class _GuardQueries(beam.DoFn):
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.index = CachedSide()
        self.dropped = {r: Metrics.counter(NAMESPACE, r) for r in (QUERY_EXACT, QUERY_NEAR)}
        self.pairs = Metrics.counter(NAMESPACE, "positives_of_dropped_queries")

    def process(self, record: Dict[str, Any], eval_set: EvalSet) -> Iterator[Any]:
        index = self.index.load(eval_set, lambda s: _EvalIndex(s, self.threshold))
        reason, matches = index.match(record["query"])
        if reason is None:
            yield record
            return
        self.dropped[reason].inc()
        self.pairs.inc(len(record["positives"]))
        yield beam.pvalue.TaggedOutput("report", {
            "reason": reason, "query_id": record["query_id"], "query": record["query"],
            "positives": [p["doc_id"] for p in record["positives"]], "eval": matches})


class _GuardNegatives(beam.DoFn):
    def __init__(self) -> None:
        self.dropped = Metrics.counter(NAMESPACE, NEGATIVE_JUDGED)

    def process(self, element: Tuple[str, Dict[str, Any]], eval_set: EvalSet) -> Iterator[Any]:
        qid, cands = element
        hits = [i for i, d in enumerate(cands["doc_ids"]) if d in eval_set.judged]
        if not hits:
            yield element
            return
        kept, removed = drop_docs(cands, [cands["doc_ids"][i] for i in hits])
        self.dropped.inc(removed)
        Metrics.counter(NAMESPACE, f"{NEGATIVE_JUDGED}_{cands['source']}").inc(removed)
        yield qid, kept
        for i in hits:
            doc_id = cands["doc_ids"][i]
            yield beam.pvalue.TaggedOutput("report", {
                "reason": NEGATIVE_JUDGED, "query_id": qid, "doc_id": doc_id, "source": cands["source"],
                "rank": cands["ranks"][i] if cands["ranks"] else None, "eval": eval_set.judged[doc_id]})


class _GuardPositives(beam.DoFn):
    def __init__(self) -> None:
        self.dropped = Metrics.counter(NAMESPACE, POSITIVE_JUDGED)

    def process(self, row: Dict[str, Any], eval_set: EvalSet) -> Iterator[Any]:
        doc_id = row["positive"]["doc_id"]
        if doc_id not in eval_set.judged:
            yield row
            return
        self.dropped.inc()
        yield beam.pvalue.TaggedOutput("report", {
            "reason": POSITIVE_JUDGED, "query_id": row["query_id"], "query": row["query"], "doc_id": doc_id,
            "positive_source": row["positive"]["source"], "eval": eval_set.judged[doc_id]})


def _count_eval(eval_set: EvalSet) -> EvalSet:
    Metrics.counter(NAMESPACE, "eval_queries").inc(len(eval_set.queries))
    Metrics.counter(NAMESPACE, "eval_judged_docs").inc(len(eval_set.judged))
    Metrics.counter(NAMESPACE, "eval_invalid_records").inc(eval_set.invalid_records)
    return eval_set


class LeakageGuard:
    """The guard's three steps on one pipeline, sharing one read of the evaluation files; each
    returns the kept elements and adds its report entries to `reports`."""

    def __init__(self, p: beam.Pipeline, settings: LeakageSettings) -> None:
        self.settings = settings
        eval_set = p | "ReadEvalSets" >> beam.Create([load_eval(settings.sources)]) | "CountEval" >> beam.Map(_count_eval)
        self.eval_set = beam.pvalue.AsSingleton(eval_set)
        self.reports: List[beam.PCollection] = []

    def _apply(self, pcoll: beam.PCollection, label: str, fn: beam.DoFn) -> beam.PCollection:
        out = pcoll | label >> beam.ParDo(fn, self.eval_set).with_outputs("report", main="kept")
        self.reports.append(out.report)
        return out.kept

    def queries(self, records: beam.PCollection) -> beam.PCollection:
        """Query records minus those that duplicate an evaluation query."""
        return self._apply(records, "GuardEvalQueries", _GuardQueries(self.settings.jaccard))

    def negatives(self, candidates: beam.PCollection) -> beam.PCollection:
        """(query_id, candidates) minus the evaluation queries' judged documents (if checked)."""
        if not self.settings.check_negatives:
            return candidates
        return self._apply(candidates, "GuardEvalNegatives", _GuardNegatives())

    def positives(self, rows: beam.PCollection) -> beam.PCollection:
        """Rows minus those whose positive is an evaluation query's judged document (if checked)."""
        if not self.settings.check_positives:
            return rows
        return self._apply(rows, "GuardEvalPositives", _GuardPositives())
