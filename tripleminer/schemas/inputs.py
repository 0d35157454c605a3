"""Input record schemas and validators: one place that says what a valid input record is.

Readers turn each raw record (a JSON line, a TSV line or a Parquet row) into a plain dict of the
shape below, or raise `InvalidRecord` with a reason that ends up in the dead-letter output.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional

import pyarrow as pa

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
    ]
)

QUERIES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

QRELS_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)

SESSIONS_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string()),
        pa.field("timestamp", pa.string()),
        pa.field("impressions", pa.list_(pa.string()), nullable=False),
        pa.field("clicks", pa.list_(pa.string()), nullable=False),
        # Optional: the user's session, which groups searches into journeys (failed-search positives).
        pa.field("user_session_id", pa.string()),
    ]
)

# BEIR JSONL spells the id `_id`; Parquet inputs use the schema names above.
BEIR_ALIASES: Dict[str, Dict[str, str]] = {
    "corpus": {"_id": "doc_id"},
    "queries": {"_id": "query_id"},
    "qrels": {"query-id": "query_id", "corpus-id": "doc_id"},
    "sessions": {},
}


# Documents longer than this (title + text, in characters) are dead letters, not triples: a book-sized
# "document" is almost always an extraction error, would be cut to a few hundred tokens by any encoder,
# and would be copied into every row that uses it. `--max_doc_chars` changes it; 0 turns it off.
DEFAULT_MAX_DOC_CHARS = 1_000_000


class InvalidRecord(ValueError):
    """A record that cannot be used; the message is the dead-letter reason."""


def _valid_unicode(text: str, field: str) -> str:
    # JSON escapes can encode lone surrogates ("\ud800"), which no UTF-8 writer (Parquet, JSONL) accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRecord(f"field '{field}' is not valid Unicode: {err.reason} at position {err.start}") from None
    return text


def _id(value: Any, field: str) -> str:
    # Ids are strings everywhere; integers are accepted because BEIR files mix them.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecord(f"field '{field}' must be a string id, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise InvalidRecord(f"field '{field}' is empty")
    return _valid_unicode(text, field)


def _text(value: Any, field: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidRecord(f"field '{field}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidRecord(f"field '{field}' is empty or whitespace")
    return _valid_unicode(value, field)


def _id_list(value: Any, field: str) -> List[str]:
    if value is None:
        raise InvalidRecord(f"missing field '{field}'")
    # A JSON array or a Parquet list; not a string, nor an object (whose keys would pass for ids).
    if not isinstance(value, (list, tuple)):
        raise InvalidRecord(f"field '{field}' must be a list of ids, got {type(value).__name__}")
    return [_id(v, f"{field}[]") for v in value]


def _renamed(record: Mapping[str, Any], kind: str) -> Dict[str, Any]:
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(record).__name__}")
    aliases = BEIR_ALIASES[kind]
    return {aliases.get(k, k): v for k, v in record.items()}


def _require(record: Mapping[str, Any], fields: List[str]) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise InvalidRecord(f"missing field(s) {', '.join(repr(m) for m in missing)}")


def validate_doc(record: Mapping[str, Any], max_chars: Optional[int] = DEFAULT_MAX_DOC_CHARS) -> Dict[str, Any]:
    """A corpus document; `max_chars` (title + text) bounds its size, None or 0 for no bound."""
    rec = _renamed(record, "corpus")
    _require(rec, ["doc_id", "text"])
    title = _text(rec.get("title"), "title", required=False)
    text = _text(rec.get("text"), "text", required=False)
    if not (title.strip() or text.strip()):
        raise InvalidRecord("document has empty title and text")
    if max_chars and len(title) + len(text) > max_chars:
        raise InvalidRecord(
            f"document too large: {len(title) + len(text)} characters (title + text) > --max_doc_chars {max_chars}"
        )
    return {"doc_id": _id(rec["doc_id"], "doc_id"), "title": title, "text": text}


def validate_query(record: Mapping[str, Any]) -> Dict[str, Any]:
    rec = _renamed(record, "queries")
    _require(rec, ["query_id", "text"])
    return {"query_id": _id(rec["query_id"], "query_id"), "text": _text(rec["text"], "text")}


def validate_qrel(record: Mapping[str, Any]) -> Dict[str, Any]:
    rec = _renamed(record, "qrels")
    _require(rec, ["query_id", "doc_id", "score"])
    value = rec["score"]
    try:
        if isinstance(value, bool):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRecord(f"field 'score' is not a number: {str(value)[:100]!r}") from None
    if not math.isfinite(score):  # NaN compares false with every threshold, so it would pass any of them
        raise InvalidRecord(f"field 'score' is not a finite number: {value!r}")
    return {"query_id": _id(rec["query_id"], "query_id"), "doc_id": _id(rec["doc_id"], "doc_id"), "score": score}


def parse_timestamp(value: Any) -> float:
    """Seconds since the epoch of an ISO 8601 time ("2026-04-10T02:10:37Z"; without a zone, UTC), so the
    searches of a user session can be put in order and their gaps measured."""
    if not isinstance(value, str):
        raise InvalidRecord(f"field 'timestamp' must be an ISO 8601 string, got {type(value).__name__}")
    try:
        time = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRecord(f"field 'timestamp' is not an ISO 8601 time: {value[:100]!r}") from None
    return (time if time.tzinfo else time.replace(tzinfo=timezone.utc)).timestamp()


def _user_session(rec: Mapping[str, Any]) -> Optional[str]:
    # Strictly a string (not an integer like other ids): a number here is a column mix-up, not an id.
    # A search in a user session is ordered by its time, so the time must be there and readable.
    user = rec.get("user_session_id")
    if user is None:
        return None
    if not isinstance(user, str):
        raise InvalidRecord(f"field 'user_session_id' must be a string, got {type(user).__name__}")
    if not user.strip():
        raise InvalidRecord("field 'user_session_id' is empty")
    if rec.get("timestamp") is None:
        raise InvalidRecord("missing field 'timestamp': a search with a user_session_id needs its time")
    parse_timestamp(rec["timestamp"])
    return _valid_unicode(user.strip(), "user_session_id")


def validate_session(record: Mapping[str, Any]) -> Dict[str, Any]:
    rec = _renamed(record, "sessions")
    _require(rec, ["session_id", "query_id", "impressions", "clicks"])
    impressions = _id_list(rec["impressions"], "impressions")
    clicks = _id_list(rec["clicks"], "clicks")
    query = rec.get("query")
    user = _user_session(rec)
    return {
        "session_id": _id(rec["session_id"], "session_id"),
        "query_id": _id(rec["query_id"], "query_id"),
        "query": _text(query, "query") if query is not None else None,
        "timestamp": None if rec.get("timestamp") is None else str(rec["timestamp"]),
        "impressions": impressions,
        "clicks": clicks,
        "user_session_id": user,
    }


VALIDATORS: Dict[str, Callable[[Mapping[str, Any]], Dict[str, Any]]] = {
    "corpus": validate_doc,
    "queries": validate_query,
    "qrels": validate_qrel,
    "sessions": validate_session,
}

INPUT_SCHEMAS: Dict[str, pa.Schema] = {
    "corpus": CORPUS_SCHEMA,
    "queries": QUERIES_SCHEMA,
    "qrels": QRELS_SCHEMA,
    "sessions": SESSIONS_SCHEMA,
}
