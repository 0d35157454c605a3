"""Beam read transforms for every input kind, with a dead-letter output for bad records.

Each reader takes a file pattern (a glob on any Beam filesystem, so sharded inputs work), picks the
format from the extension (.jsonl/.json, .tsv, .parquet), validates every record against
`tripleminer.schemas.inputs` and emits good records on the main output and
`{"input", "file", "reason", "raw"}` dicts on the `dead` output. Problems that make a whole input
unusable (no matching file, a Parquet file of the wrong schema) raise `InputError` at pipeline
construction, naming the file.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.schemas.inputs import INPUT_SCHEMAS, VALIDATORS, InvalidRecord

DEAD = "dead"
RAW_LIMIT = 2000  # characters of a bad record kept in the dead letter


class InputError(ValueError):
    """An input that cannot be used at all; the message names the file and the problem."""


def dead_letter(kind: str, file: str, reason: str, raw: Any) -> Dict[str, str]:
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str, ensure_ascii=False)
    return {"input": kind, "file": file, "reason": reason, "raw": text[:RAW_LIMIT]}


def matched_files(pattern: str, option: str) -> List[str]:
    """Files matching `pattern`, or an `InputError` that names the option and the pattern."""
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam raises BeamIOError subclasses per filesystem
        raise InputError(f"--{option}: cannot list {pattern!r}: {err}") from err
    files = sorted(m.path for m in metadata)
    if not files:
        raise InputError(f"--{option}: no file matches {pattern!r}")
    return files


def input_format(files: List[str], option: str) -> str:
    formats = set()
    for path in files:
        lower = path.lower().removesuffix(".gz")
        fmt = next((f for f in ("jsonl", "json", "tsv", "parquet") if lower.endswith("." + f)), None)
        if fmt is None:
            raise InputError(f"--{option}: {path}: unknown format (expected .jsonl, .json, .tsv or .parquet)")
        formats.add("jsonl" if fmt == "json" else fmt)
    if len(formats) > 1:
        raise InputError(f"--{option}: pattern mixes formats {sorted(formats)}")
    return formats.pop()


def check_parquet_schema(path: str, kind: str, option: str) -> List[str]:
    """The schema's columns present in `path`; fails early, naming the file, on a missing or mistyped one."""
    with FileSystems.open(path) as f:
        try:
            schema = pq.read_schema(f)
        except Exception as err:
            raise InputError(f"--{option}: {path}: not a readable Parquet file: {err}") from err
    expected = INPUT_SCHEMAS[kind]
    for field in expected:
        if field.name not in schema.names:
            if not field.nullable:
                raise InputError(f"--{option}: {path}: missing column {field.name!r} (expected schema {expected})")
            continue
        actual = schema.field(field.name).type
        if not _compatible(actual, field.type):
            raise InputError(f"--{option}: {path}: column {field.name!r} has type {actual}, expected {field.type}")
    return [field.name for field in expected if field.name in schema.names]


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return actual == expected


class _ParseLine(beam.DoFn):
    """Decode, parse and validate one text line; bad ones go to the dead-letter output."""

    def __init__(self, kind: str, fmt: str) -> None:
        self.kind, self.fmt = kind, fmt
        self.ok = Metrics.counter("read", f"{kind}_ok")
        self.bad = Metrics.counter("read", f"{kind}_dead_letter")
        self.skipped = Metrics.counter("read", f"{kind}_blank_or_header_lines")

    def process(self, element: Tuple[str, bytes]) -> Iterator[Any]:
        path, raw = element
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, path, f"not UTF-8: {err}", repr(raw)))
            return
        if not line.strip() or (self.fmt == "tsv" and _is_qrels_header(line)):
            self.skipped.inc()
            return
        try:
            record = self._parse(line)
            yield VALIDATORS[self.kind](record)
            self.ok.inc()
        except InvalidRecord as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, path, str(err), line))

    def _parse(self, line: str) -> Any:
        if self.fmt == "tsv":
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) not in (3, 4):
                raise InvalidRecord(f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}")
            # TREC qrels have 4 columns (query, iteration, doc, score); BEIR has 3.
            qid, did, score = (cols[0], cols[2], cols[3]) if len(cols) == 4 else cols
            return {"query_id": qid, "doc_id": did, "score": score}
        try:
            return json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidRecord(f"malformed JSON: {err}") from None


def _is_qrels_header(line: str) -> bool:
    return line.lower().startswith(("query-id", "query_id", "qid"))


class _ValidateRow(beam.DoFn):
    """Validate one Parquet row (already typed by the schema check)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.ok = Metrics.counter("read", f"{kind}_ok")
        self.bad = Metrics.counter("read", f"{kind}_dead_letter")

    def process(self, element: Tuple[str, Dict[str, Any]]) -> Iterator[Any]:
        path, row = element
        try:
            yield VALIDATORS[self.kind](row)
            self.ok.inc()
        except InvalidRecord as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, path, str(err), row))


class ReadRecords(beam.PTransform):
    """Read and validate one input kind (`corpus`, `queries`, `qrels`, `sessions`).

    Returns `{"records": validated dicts, "dead": dead letters}`.
    """

    def __init__(self, kind: str, pattern: str, option: str) -> None:
        super().__init__(label=f"Read {kind}")
        if kind not in VALIDATORS:
            raise ValueError(f"unknown input kind {kind!r}")
        self.kind, self.pattern, self.option = kind, pattern, option
        self.files = matched_files(pattern, option)
        self.fmt = input_format(self.files, option)
        if self.fmt == "tsv" and kind != "qrels":
            raise InputError(f"--{option}: TSV is only supported for qrels")
        self.columns = {p: check_parquet_schema(p, kind, option) for p in self.files} if self.fmt == "parquet" else {}

    def expand(self, pbegin: beam.pvalue.PBegin):
        if self.fmt == "parquet":
            # Optional columns absent from some file are read from none, so every row has one shape.
            columns = [c for c in self.columns[self.files[0]] if all(c in cols for cols in self.columns.values())]
            rows = (
                pbegin
                | "ListFiles" >> beam.Create(self.files)
                | "ReadParquet" >> beam.io.ReadAllFromParquet(with_filename=True, columns=columns)
            )
            checked = rows | "Validate" >> beam.ParDo(_ValidateRow(self.kind)).with_outputs(DEAD, main="records")
            return {"records": checked.records, "dead": checked.dead}
        lines = pbegin | "ReadLines" >> beam.io.ReadFromTextWithFilename(self.pattern, coder=BytesCoder())
        parsed = lines | "Parse" >> beam.ParDo(_ParseLine(self.kind, self.fmt)).with_outputs(DEAD, main="records")
        return {"records": parsed.records, "dead": parsed.dead}
