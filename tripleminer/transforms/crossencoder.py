"""Denoise mined negatives with a cross-encoder, as RocketQA does: keep only confident negatives.

Hard negatives from BM25 or impressions are often unjudged relevant documents (false negatives),
which teach a dense retriever the wrong thing. A cross-encoder reads query and passage together and
scores P(relevant); negatives above a threshold are dropped and reported, the rest carry their
`ce_score`. Optionally, for queries with few labels, confidently relevant candidates become new
positives (source `ce_augmented`), and only very confident negatives are kept.

Each distinct (query text, passage text) pair is scored once however many rows share it, and its
score is cached under `WORK_DIR/ce_scores/<model key>/` (`transforms/cache.py`), so a rerun with
other thresholds or another mix scores only new pairs. The pairs not in the cache go through Beam's
`RunInference` with `CrossEncoderModelHandler`, `batch_pairs` at a time, so one model call sees
hundreds of pairs (sorted by length inside `predict`) and the model loads once per worker process.
Rows are then joined with their scores per query, so augmentation sees all of a query's labels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.fingerprint import model_key
from tripleminer.precision import key_suffix, log_precision, resolve_precision
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.cache import SCORES, CachedCompute, CountedModelHandler, content_key

NAMESPACE = "crossencoder"
AUGMENTED = "ce_augmented"
REPORT_FIELDS = ("query_id", "query", "doc_id", "source", "rank", "score", "ce_score")
SCORE_STAGE = "crossencoder_score"  # busy time in `time/crossencoder_score_ms`

Row = Dict[str, Any]
PairKey = Tuple[str, str]  # (query text, passage text): what the model actually reads


@dataclass(frozen=True)
class DenoiseSettings:
    """Model and thresholds of the denoising stage (all scores are probabilities in [0, 1])."""

    model: str  # local directory, any Beam filesystem path, or hub id of a one-logit CrossEncoder
    drop_threshold: float = 0.5  # drop negatives scoring above this
    augment: bool = False
    positive_threshold: float = 0.9  # augment: candidates at or above become positives
    negative_threshold: float = 0.1  # augment: only negatives at or below are kept
    augment_max_labels: int = 1  # augment queries with at most this many labeled positives
    batch_pairs: int = 512  # pairs (approximately) per model call
    predict_batch_size: int = 64  # pairs per forward pass inside a call
    max_length: Optional[int] = None  # tokens per pair; None: the model's own setting
    device: Optional[str] = None
    # auto | fp32 | bf16 | fp16, resolved on construction (on the machine that plans the run) to the
    # precision the forward passes use, as for the bi-encoder (`tripleminer/precision.py`)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device))
        for name in ("drop_threshold", "positive_threshold", "negative_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.augment and self.negative_threshold >= self.positive_threshold:
            raise ValueError("negative_threshold must be below positive_threshold, or a document could be both")

    def key(self) -> str:
        """Identifies the scores this model produces (cache folder name): model, max length and the
        compute precision (`-bf16`/`-fp16` appended; fp32 keys are those from before precision existed)."""
        return model_key(self.model, self.max_length) + key_suffix(self.precision)

    @property
    def keep_at_most(self) -> float:
        """A negative is kept when its score is at most this."""
        return self.negative_threshold if self.augment else self.drop_threshold


@dataclass
class QueryResult:
    """What denoising one query produced: its rows (new ones included), report entries, counts."""

    rows: List[Row]
    report: List[Dict[str, Any]]
    scored: Counter = field(default_factory=Counter)  # per source, distinct (document, source) of the query
    flagged: Counter = field(default_factory=Counter)
    augmented: int = 0


def pair_key(row: Mapping[str, Any], doc: Mapping[str, Any]) -> PairKey:
    return row["query"], passage_text(doc)


def pairs_to_score(rows: Iterable[Row]) -> List[PairKey]:
    """The distinct (query, passage) pairs of the rows' negatives, in first-seen order."""
    return list(dict.fromkeys(pair_key(r, n) for r in rows for n in r["negatives"]))


def denoise_query(rows: List[Row], scores: Mapping[PairKey, float], settings: DenoiseSettings) -> QueryResult:
    """Set `ce_score` on every negative of one query's rows, drop the unconfident ones, maybe augment.

    Pure (given the scores), so thresholds are testable without a model. Counts and report entries
    are per distinct (document, source) of the query, so a document shared by several rows counts once.
    """
    result = QueryResult(rows=[], report=[])
    seen = set()
    candidates: Dict[str, Tuple[float, Mapping[str, Any]]] = {}
    for row in rows:
        kept = []
        for neg in row["negatives"]:
            ce = float(scores[pair_key(row, neg)])
            neg = {**neg, "ce_score": ce}  # inputs stay untouched: Beam may share them between consumers
            flagged = ce > settings.keep_at_most
            if flagged:
                candidates.setdefault(passage_text(neg), (ce, neg))
            else:
                kept.append(neg)
            if (neg["doc_id"], neg["source"]) in seen:
                continue
            seen.add((neg["doc_id"], neg["source"]))
            result.scored[neg["source"]] += 1
            if flagged:
                result.flagged[neg["source"]] += 1
                result.report.append({"query_id": row["query_id"], "query": row["query"], **{k: neg.get(k) for k in REPORT_FIELDS[2:]}})
        result.rows.append({**row, "negatives": kept})
    if settings.augment:
        result.rows += _augmented_rows(result.rows, candidates, settings)
        result.augmented = len(result.rows) - len(rows)
    return result


def _augmented_rows(rows: List[Row], candidates: Mapping[str, Tuple[float, Mapping[str, Any]]], settings: DenoiseSettings) -> List[Row]:
    """New (query, candidate) rows for confidently relevant candidates of a query with few labels.

    They borrow the negatives kept for the query's first row (by positive doc id), all of which are
    confident negatives, so an augmented row is as usable for training as a labeled one.
    """
    labeled = {r["positive"]["doc_id"] for r in rows if r["positive"]["source"] != AUGMENTED}
    if not rows or len(labeled) > settings.augment_max_labels:
        return []
    template = min(rows, key=lambda r: r["positive"]["doc_id"])
    positives = {r["positive"]["doc_id"] for r in rows}  # augmented ones of an earlier pass included
    confident = sorted(
        ((ce, doc) for ce, doc in candidates.values() if ce >= settings.positive_threshold and doc["doc_id"] not in positives),
        key=lambda c: (-c[0], c[1]["doc_id"]),
    )
    new, taken = [], set()
    for _, doc in confident:
        if doc["doc_id"] in taken:
            continue
        taken.add(doc["doc_id"])
        positive = {"doc_id": doc["doc_id"], "title": doc.get("title"), "text": doc["text"], "source": AUGMENTED,
                    "label": None, "clicks": None, "impressions": None, "ctr": None}
        new.append({**template, "positive": positive, "negatives": [dict(n) for n in template["negatives"]]})
    return new


def false_negative_rates(counters: Mapping[str, int]) -> Dict[str, Dict[str, float]]:
    """Per negative source: negatives scored, flagged as likely relevant, and the flagged fraction.

    `counters` is the `crossencoder` namespace of a run's counters (`stats["counters"]["crossencoder"]`).
    A source with a high rate brings many unjudged relevant documents: worth fewer slots in the mix,
    or a rank window further from the top.
    """
    out = {}
    for name, scored in sorted(counters.items()):
        if name.startswith("scored_"):
            source = name[len("scored_"):]
            flagged = counters.get(f"flagged_{source}", 0)
            out[source] = {"scored": scored, "flagged": flagged, "rate": flagged / scored if scored else 0.0}
    return out


def pairs_per_second(counters: Mapping[str, Mapping[str, int]]) -> float:
    """Cross-encoder throughput of a run, from all its counters (busy time in the scoring calls)."""
    busy_ms = counters.get("time", {}).get(f"{SCORE_STAGE}_ms", 0)
    pairs = counters.get(NAMESPACE, {}).get("pairs_scored", 0)
    return pairs / (busy_ms / 1000) if busy_ms else 0.0


class CrossEncoderModelHandler(CountedModelHandler):
    """(query, passage) pairs -> `PredictionResult(pair, P(relevant))` with `rerank.score.score_pairs`,
    one `predict` call per batch of `batch_pairs` pairs (sorted by length inside it).

    Counts `crossencoder/pairs_scored` and the busy time `time/crossencoder_score_ms`; Beam's own
    RunInference metrics go under `RunInference_crossencoder`.
    """

    def __init__(self, settings: DenoiseSettings) -> None:
        super().__init__(Metrics.counter(NAMESPACE, "pairs_scored"), SCORE_STAGE, ("cross-encoder", "pairs scored"),
                         settings.batch_pairs, settings.batch_pairs)
        self.settings = settings

    def load_model(self) -> Any:
        from tripleminer.io.fs import local_copy
        from tripleminer.rerank.score import load_cross_encoder

        model = load_cross_encoder(local_copy(self.settings.model), max_length=self.settings.max_length,
                                   device=self.settings.device)
        log_precision("cross-encoder", self.settings.model, self.settings.precision, model.device.type)
        return model

    def predict(self, batch: List[PairKey], model: Any) -> Sequence[Any]:
        from tripleminer.rerank.score import score_pairs

        return score_pairs(model, batch, self.settings.predict_batch_size, precision=self.settings.precision)

    def get_num_bytes(self, batch: Sequence[PairKey]) -> int:
        return sum(len(q) + len(p) for q, p in batch)  # characters: cheaper than Beam's default of pickling

    def get_metrics_namespace(self) -> str:
        return f"RunInference_{NAMESPACE}"


class _Denoise(beam.DoFn):
    """(query id, {rows, scores}) -> the query's denoised rows, and report entries (tagged)."""

    def __init__(self, settings: DenoiseSettings) -> None:
        self.settings = settings
        self.augmented = Metrics.counter(NAMESPACE, "rows_augmented")
        self.emptied = Metrics.counter(NAMESPACE, "rows_left_without_negatives")

    def process(self, element: Tuple[str, Mapping[str, Iterable[Any]]]) -> Iterator[Any]:
        joined = element[1]
        result = denoise_query(list(joined["rows"]), dict(joined["scores"]), self.settings)
        for source, n in result.scored.items():
            Metrics.counter(NAMESPACE, f"scored_{source}").inc(n)
        for source, n in result.flagged.items():
            Metrics.counter(NAMESPACE, f"flagged_{source}").inc(n)
        self.augmented.inc(result.augmented)
        self.emptied.inc(sum(1 for r in result.rows if not r["negatives"]))
        yield from result.rows
        for entry in result.report:
            yield beam.pvalue.TaggedOutput("report", entry)


def _query_pairs(row: Row) -> List[Tuple[Tuple[str, PairKey], PairKey]]:
    """((query id, pair), pair) for each distinct pair of a row: items for the score cache."""
    return [((row["query_id"], pair), pair) for pair in pairs_to_score([row])]


class CrossEncoderDenoise(beam.PTransform):
    """Nested rows (texts filled) -> {"rows": denoised rows, "report": one dict per dropped negative}.

    Report entries have REPORT_FIELDS: the query, the dropped document, its source, rank and score
    there, and its cross-encoder probability. Scores are cached under `work_dir`.
    """

    def __init__(self, settings: DenoiseSettings, work_dir: str) -> None:
        super().__init__()
        self.settings = settings
        self.cache_dir = FileSystems.join(work_dir, "ce_scores", settings.key())

    def expand(self, rows: beam.PCollection) -> Dict[str, beam.PCollection]:
        scores = (
            rows
            | "PairsToScore" >> beam.FlatMap(_query_pairs)
            | "ScorePairs" >> CachedCompute(self.cache_dir, "pairs", lambda pair: content_key(*pair),
                                            CrossEncoderModelHandler(self.settings), SCORES, NAMESPACE, "pair_cache_hits")
            | "KeyScoreByQuery" >> beam.MapTuple(lambda item, score: (item[0], (item[1], score)))
        )
        out = (
            {"rows": rows | "KeyByQuery" >> beam.Map(lambda r: (r["query_id"], r)), "scores": scores}
            | "JoinScores" >> beam.CoGroupByKey()
            | "Denoise" >> beam.ParDo(_Denoise(self.settings)).with_outputs("report", main="rows")
        )
        return {"rows": out.rows, "report": out.report}
