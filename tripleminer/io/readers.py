"""Beam read transforms for every input kind, with a dead-letter output for bad records.

Each reader takes a file pattern (a glob on any Beam filesystem, so sharded inputs work), picks the
format from the extension (.jsonl/.json, .tsv, .parquet), validates every record against
`tripleminer.schemas.inputs` and emits good records on the main output and dead letters
(`schemas.outputs.dead_letter`: input, file, reason, raw) on the `dead` output. Problems that make a whole input
unusable (no matching file, only empty files, a directory, a `.gz` file that is not gzip, a Parquet
file of the wrong schema) raise `InputError` at pipeline construction, naming the file.

Text inputs may be gzip-compressed (`.jsonl.gz`, `.tsv.gz`); those are read file by file (gzip is not
splittable anyway) so that a truncated or corrupt stream becomes a dead letter naming the file and
the line it broke at, instead of silently ending the file early.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.schemas.inputs import DEFAULT_MAX_DOC_CHARS, INPUT_SCHEMAS, VALIDATORS, InvalidRecord
from tripleminer.schemas.outputs import dead_letter

DEAD = "dead"


class InputError(ValueError):
    """An input that cannot be used at all; the message names the file and the problem."""


def matched_files(pattern: str, option: str) -> List[str]:
    """Files matching `pattern`, or an `InputError` that names the option and the pattern.

    A directory, or a pattern whose files are all empty, is an error too: both are mistakes (a
    folder instead of `folder/*.jsonl`, a file truncated to nothing), never an input with no records.
    """
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam raises BeamIOError subclasses per filesystem
        raise InputError(f"--{option}: cannot list {pattern!r}: {err}") from err
    files = sorted(m.path for m in metadata)
    if not files:
        raise InputError(f"--{option}: no file matches {pattern!r}")
    for path in files:
        if "://" not in path and os.path.isdir(path):
            raise InputError(f"--{option}: {path} is a directory; pass a file pattern such as {os.path.join(path, '*.jsonl')}")
    if all(m.size_in_bytes == 0 for m in metadata):
        raise InputError(f"--{option}: {', '.join(files)}: empty file{'s' if len(files) > 1 else ''} (0 bytes)")
    return files


def is_gzip(path: str) -> bool:
    return path.lower().endswith(".gz")


def check_gzip(path: str, option: str) -> None:
    """A `.gz` name must hold gzip data (else Beam fails deep inside its reader)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        magic = f.read(2)
    if magic and magic != b"\x1f\x8b":
        raise InputError(f"--{option}: {path}: not gzip data although the name ends in .gz")


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
    if pa.types.is_dictionary(actual):  # dictionary-encoded columns (e.g. pandas categoricals) read as their values
        return _compatible(actual.value_type, expected)
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return actual == expected


def first_record_has(pattern: str, option: str, field: str) -> bool:
    """Whether the first record of the input's first file has `field` (a Parquet column, a JSON key):
    a cheap look at plan time, for defaults that depend on what an input carries (a log with user
    sessions). An input that cannot be read says no here; reading it later reports why."""
    try:
        path = matched_files(pattern, option)[0]
        with FileSystems.open(path) as f:  # decompresses .gz by its name
            if input_format([path], option) == "parquet":
                return field in pq.read_schema(f).names
            line = f.readline()
            while line and not line.strip():
                line = f.readline()
        record = json.loads(line.decode("utf-8").removeprefix("\ufeff")) if line.strip() else None
    except (OSError, EOFError, zlib.error, ValueError):  # ValueError: InputError, bad JSON, UTF-8 or Parquet
        return False
    return isinstance(record, dict) and record.get(field) is not None


def validator(kind: str, max_doc_chars: Optional[int] = DEFAULT_MAX_DOC_CHARS):
    """The record validator of `kind`; the corpus one with its document size bound."""
    if kind == "corpus":
        return functools.partial(VALIDATORS["corpus"], max_chars=max_doc_chars)
    return VALIDATORS[kind]


CR_HINT = " (the line contains carriage returns: a file with old Mac, CR-only, line endings reads as one line; convert it to \\n line endings)"


class _ParseLine(beam.DoFn):
    """Decode, parse and validate one text line; bad ones go to the dead-letter output."""

    def __init__(self, kind: str, fmt: str, max_doc_chars: Optional[int] = DEFAULT_MAX_DOC_CHARS) -> None:
        self.kind, self.fmt = kind, fmt
        self.validate = validator(kind, max_doc_chars)
        self.ok = Metrics.counter("read", f"{kind}_ok")
        self.bad = Metrics.counter("read", f"{kind}_dead_letter")
        self.skipped = Metrics.counter("read", f"{kind}_blank_or_header_lines")

    def process(self, element: Tuple[str, bytes]) -> Iterator[Any]:
        path, raw = element
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, f"not UTF-8: {err}", repr(raw), file=path))
            return
        line = line.removeprefix("\ufeff")  # a byte-order mark opens files saved by some Windows tools
        if not line.strip() or (self.fmt == "tsv" and _is_qrels_header(line)):
            self.skipped.inc()
            return
        try:
            record = self._parse(line)
            yield self.validate(record)
            self.ok.inc()
        except InvalidRecord as err:
            self.bad.inc()
            reason = str(err) + (CR_HINT if "\r" in line.rstrip("\r") else "")
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, reason, line, file=path))

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
        except ValueError as err:  # JSONDecodeError, and integers longer than Python's 4300-digit limit
            raise InvalidRecord(f"malformed JSON: {err}") from None
        except RecursionError:
            raise InvalidRecord("malformed JSON: nested too deeply") from None


def _is_qrels_header(line: str) -> bool:
    return line.lower().startswith(("query-id", "query_id", "qid"))


class _ReadLines(beam.DoFn):
    """path -> (path, line bytes), for inputs that include gzip files (read whole, one file per call).

    A gzip stream that is truncated or corrupt ends in a dead letter naming the file and how many
    lines were read before it broke (those lines are kept), and counts `read/<kind>_unreadable_files`.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.unreadable = Metrics.counter("read", f"{kind}_unreadable_files")

    def process(self, path: str) -> Iterator[Any]:
        lines = 0
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                f = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(path) else raw
                for line in f:
                    lines += 1
                    yield path, _strip_line_end(line)
        except (OSError, EOFError, zlib.error) as err:
            self.unreadable.inc()
            reason = f"unreadable file: {type(err).__name__}: {err} (after {lines} lines, which were read)"
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, reason, "", file=path))


def _strip_line_end(line: bytes) -> bytes:
    """Drop the line end (LF or CRLF), as Beam's text reader does."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


class _ValidateRow(beam.DoFn):
    """Validate one Parquet row (already typed by the schema check)."""

    def __init__(self, kind: str, max_doc_chars: Optional[int] = DEFAULT_MAX_DOC_CHARS) -> None:
        self.kind = kind
        self.validate = validator(kind, max_doc_chars)
        self.ok = Metrics.counter("read", f"{kind}_ok")
        self.bad = Metrics.counter("read", f"{kind}_dead_letter")

    def process(self, element: Tuple[str, Dict[str, Any]]) -> Iterator[Any]:
        path, row = element
        try:
            yield self.validate(row)
            self.ok.inc()
        except InvalidRecord as err:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(self.kind, str(err), row, file=path))


class ReadRecords(beam.PTransform):
    """Read and validate one input kind (`corpus`, `queries`, `qrels`, `sessions`).

    Returns `{"records": validated dicts, "dead": dead letters}`. `max_doc_chars` bounds a corpus
    document's title + text (larger ones are dead letters); None or 0 for no bound.
    """

    def __init__(self, kind: str, pattern: str, option: str, max_doc_chars: Optional[int] = DEFAULT_MAX_DOC_CHARS) -> None:
        super().__init__(label=f"Read {kind}")
        if kind not in VALIDATORS:
            raise ValueError(f"unknown input kind {kind!r}")
        self.kind, self.pattern, self.option, self.max_doc_chars = kind, pattern, option, max_doc_chars
        self.files = matched_files(pattern, option)
        self.fmt = input_format(self.files, option)
        if self.fmt == "tsv" and kind != "qrels":
            raise InputError(f"--{option}: TSV is only supported for qrels")
        self.columns = {p: check_parquet_schema(p, kind, option) for p in self.files} if self.fmt == "parquet" else {}
        for path in self.files:
            if self.fmt != "parquet" and is_gzip(path):
                check_gzip(path, option)

    def expand(self, pbegin: beam.pvalue.PBegin):
        if self.fmt == "parquet":
            # Optional columns absent from some file are read from none, so every row has one shape.
            columns = [c for c in self.columns[self.files[0]] if all(c in cols for cols in self.columns.values())]
            rows = (
                pbegin
                | "ListFiles" >> beam.Create(self.files)
                | "ReadParquet" >> beam.io.ReadAllFromParquet(with_filename=True, columns=columns)
            )
            checked = rows | "Validate" >> beam.ParDo(_ValidateRow(self.kind, self.max_doc_chars)).with_outputs(DEAD, main="records")
            return {"records": checked.records, "dead": checked.dead}
        unreadable = []
        if any(is_gzip(path) for path in self.files):
            read = (
                pbegin
                | "ListFiles" >> beam.Create(self.files)
                | "ReadLines" >> beam.ParDo(_ReadLines(self.kind)).with_outputs(DEAD, main="lines")
            )
            lines, unreadable = read.lines, [read.dead]
        else:
            lines = pbegin | "ReadLines" >> beam.io.ReadFromTextWithFilename(self.pattern, coder=BytesCoder())
        parsed = lines | "Parse" >> beam.ParDo(_ParseLine(self.kind, self.fmt, self.max_doc_chars)).with_outputs(DEAD, main="records")
        dead = parsed.dead if not unreadable else [parsed.dead] + unreadable | "AllDead" >> beam.Flatten()
        return {"records": parsed.records, "dead": dead}
