"""Output schemas: the triples every pipeline writes and every trainer reads.

`nested` keeps full provenance (source, rank, score of every negative) so a trainer can choose a
mix later without re-mining. `triplet` and `n-tuple` are the column layouts of
sentence-transformers' `mine_hard_negatives`, so `datasets.load_dataset("parquet", ...)` feeds them
to any sentence-transformers loss unchanged (those losses take columns by position, so the flat
layouts carry text columns only).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

import pyarrow as pa

OUTPUT_FORMATS = ("nested", "triplet", "n-tuple")
METADATA_KEY = b"tripleminer"
SCHEMA_VERSION = 1

POSITIVE_TYPE = pa.struct(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        # Where the pair came from: qrel, click, failed_search, bm25_teacher, or a pretext generator (ict, crop, span, ...).
        pa.field("source", pa.string(), nullable=False),
        pa.field("label", pa.float64()),  # judged relevance (qrels), if any
        pa.field("clicks", pa.int64()),  # aggregated over sessions, if from a log
        pa.field("impressions", pa.int64()),
        pa.field("ctr", pa.float64()),
        pa.field("score", pa.float64()),  # dense (bi-encoder) score of (query, positive), if computed
        pa.field("ce_score", pa.float64()),  # cross-encoder probability of relevance, if scored
        # How sure the source is that this is a positive, in [0, 1] (a ranking score, higher = surer), where it
        # estimates one (click, failed_search, bm25_teacher); for a trainer to filter or weight by. Null elsewhere,
        # judged (qrel) pairs included: a trainer reads null as fully trusted.
        pa.field("confidence", pa.float64()),
        # failed_search provenance: the follow-up search whose click this is, seconds from the failed search to
        # it, and the content-word overlap of the two queries.
        pa.field("followup_query_id", pa.string()),
        pa.field("gap_s", pa.float64()),
        pa.field("relatedness", pa.float64()),
        # bm25_teacher provenance: the positive's 1-based rank and BM25 score in its query's BM25 ranking (`score`
        # above is the dense score, which the positive-aware filter fills in).
        pa.field("teacher_rank", pa.int32()),
        pa.field("teacher_score", pa.float64()),
    ]
)

NEGATIVE_TYPE = pa.struct(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # impression, random, bm25, gold, ann, ...
        pa.field("rank", pa.int32()),  # 1-based rank in the source's ranking; null if unranked
        pa.field("score", pa.float64()),  # the source's score (BM25, cosine, ...); null if none
        pa.field("ce_score", pa.float64()),  # cross-encoder probability of relevance, if scored
    ]
)

NESTED_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive", POSITIVE_TYPE, nullable=False),
        pa.field("negatives", pa.list_(NEGATIVE_TYPE), nullable=False),
    ]
)

CLUSTER_COLUMN = "query_cluster"  # the query's topic cluster (--query_clusters), read by `tripleminer train --batch_by_cluster`


def nested_schema(query_clusters: bool = False) -> pa.Schema:
    """The nested layout, with a non-null int32 `query_cluster` column only when the run clustered its
    queries: without clustering the shards stay exactly those of runs before the option existed, and a
    trainer asked to batch by cluster refuses them for lacking the column, instead of reading a column
    of nulls as one big cluster. Old and new shards read alike (readers take columns by name)."""
    return NESTED_SCHEMA.append(pa.field(CLUSTER_COLUMN, pa.int32(), nullable=False)) if query_clusters else NESTED_SCHEMA


TRIPLET_SCHEMA = pa.schema(
    [
        pa.field("anchor", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("negative", pa.string(), nullable=False),
    ]
)


def ntuple_schema(num_negatives: int) -> pa.Schema:
    """`anchor, positive, negative_1 .. negative_n`, as sentence-transformers' n-tuple format."""
    if num_negatives < 1:
        raise ValueError("n-tuple output needs at least one negative per row")
    fields = [pa.field("anchor", pa.string(), nullable=False), pa.field("positive", pa.string(), nullable=False)]
    fields += [pa.field(f"negative_{i}", pa.string(), nullable=False) for i in range(1, num_negatives + 1)]
    return pa.schema(fields)


def with_run_metadata(schema: pa.Schema, config: Mapping[str, Any]) -> pa.Schema:
    """Attach the run's configuration (seed included) to the schema, so every shard carries it."""
    payload = json.dumps({"schema_version": SCHEMA_VERSION, **config}, sort_keys=True, default=str)
    return schema.with_metadata({METADATA_KEY: payload.encode()})


def read_run_metadata(schema: pa.Schema) -> Dict[str, Any]:
    meta = schema.metadata or {}
    if METADATA_KEY not in meta:
        raise KeyError("not a tripleminer shard: no run metadata in the Parquet schema")
    return json.loads(meta[METADATA_KEY])


def passage_text(doc: Mapping[str, Any]) -> str:
    """The text a model sees for a document: title and body, as BEIR evaluations embed them."""
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def flatten_row(row: Mapping[str, Any], output_format: str, num_negatives: Optional[int] = None) -> List[Dict[str, str]]:
    """Turn one nested row into the flat rows of `triplet` or `n-tuple` (empty if it cannot fill one)."""
    anchor, positive = row["query"], passage_text(row["positive"])
    negatives = [passage_text(n) for n in row["negatives"]]
    if output_format == "triplet":
        return [{"anchor": anchor, "positive": positive, "negative": n} for n in negatives]
    if output_format == "n-tuple":
        if num_negatives is None or len(negatives) < num_negatives:
            return []
        out = {"anchor": anchor, "positive": positive}
        out.update({f"negative_{i}": n for i, n in enumerate(negatives[:num_negatives], start=1)})
        return [out]
    raise ValueError(f"unknown flat output format {output_format!r}; choose one of {OUTPUT_FORMATS}")


DEAD_LETTER_FIELDS = ("input", "file", "reason", "raw")
RAW_LIMIT = 2000  # characters of a bad record kept in the dead letter


def dead_letter(kind: str, reason: str, record: Any, file: str = "") -> Dict[str, str]:
    """The one shape of a dead letter (`DEAD_LETTER_FIELDS`), whichever stage rejects the record, so
    `dead_letter-*.jsonl` and the report read every one alike.

    `kind` is the input the record came from (corpus, queries, qrels, sessions, positives), `file` the
    file a reader found it in ("" for later stages), and `record` the record itself: kept as text, JSON
    for anything but a string, cut to `RAW_LIMIT` characters so one huge record cannot bloat the output.
    """
    raw = record if isinstance(record, str) else json.dumps(record, default=str, ensure_ascii=False)
    return dict(zip(DEAD_LETTER_FIELDS, (kind, file, reason, raw[:RAW_LIMIT])))
