"""Bad input of every kind, read by the real Beam readers: each line or row is a record, a dead
letter whose reason says what is wrong, or a counted blank/header line; an input that cannot be
used at all fails before the pipeline runs, with the option and the file named.

The cases here are the reader-level rows of docs/reliability.md; pipeline-level cases (duplicates,
unknown documents, queries without text, ...) are in test_reliability_accounting.py.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tripleminer.io.readers import InputError, ReadRecords
from tripleminer.schemas.outputs import RAW_LIMIT
from tripleminer.schemas.inputs import CORPUS_SCHEMA, QRELS_SCHEMA, SESSIONS_SCHEMA

MAX_DOC_CHARS = 5000  # the corpus cases run with a small bound so the "huge" document stays small


def run_readers(specs: Dict[str, Tuple[str, str, Optional[int]]], out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Run one ReadRecords per spec (label -> (kind, pattern, max_doc_chars)) in ONE pipeline.

    Returns, per label, its records, its dead letters and its `read` counters (by step, so labels
    do not mix)."""
    p = beam.Pipeline(options=PipelineOptions([]))
    tagged = []
    for label, (kind, pattern, max_chars) in specs.items():
        out = p | label >> ReadRecords(kind, pattern, kind, max_chars)
        for name in ("records", "dead"):
            tagged.append(out[name] | f"{label}/Tag{name}" >> beam.Map(lambda r, l=label, n=name: json.dumps([l, n, r])))
    tagged | "All" >> beam.Flatten() | "Write" >> beam.io.WriteToText(str(out_dir / "collected"), shard_name_template="")
    result = p.run()
    result.wait_until_finish()
    got: Dict[str, Dict[str, Any]] = {label: {"records": [], "dead": [], "counters": {}} for label in specs}
    for line in (out_dir / "collected").read_text(encoding="utf-8").splitlines():
        label, name, value = json.loads(line)
        got[label][name].append(value)
    for c in result.metrics().query()["counters"]:
        label = c.key.step.split("/", 1)[0]
        if label in got and c.key.metric.namespace == "read":
            value = c.committed if c.committed is not None else c.attempted
            counters = got[label]["counters"]
            counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + value
    return got


# --------------------------------------------------------------------------------------------
# Line cases: (tag, line bytes, expected) where expected is ("record", id) | ("dead", reason part)
# | ("skip", None). Every line carries its tag, so its dead letter's raw text identifies it.
# --------------------------------------------------------------------------------------------

CORPUS_LINES: List[Tuple[str, bytes, Tuple[str, Optional[str]]]] = [
    ("bom", b'\xef\xbb\xbf{"_id": "bom", "title": "T", "text": "first line of a file saved with a byte-order mark"}', ("record", "bom")),
    ("good", b'{"_id": "good", "title": "T", "text": "fine", "extra": {"ignored": true}}', ("record", "good")),
    ("crlf", b'{"_id": "crlf", "title": "T", "text": "windows line end"}\r', ("record", "crlf")),
    ("int_id", b'{"_id": 12, "title": "", "text": "a number as id"}', ("record", "12")),
    ("malformed", b'{"_id": "malformed", "text": ', ("dead", "malformed JSON")),
    ("text_list", b'{"_id": "text_list", "text": ["not", "text"]}', ("dead", "field 'text' must be a string, got list")),
    ("float_id", b'{"_id": 3.5, "text": "float_id"}', ("dead", "field 'doc_id' must be a string id, got float")),
    ("bool_id", b'{"_id": true, "text": "bool_id"}', ("dead", "field 'doc_id' must be a string id, got bool")),
    ("empty_id", b'{"_id": "  ", "text": "empty_id"}', ("dead", "field 'doc_id' is empty")),
    ("no_text", b'{"_id": "no_text", "title": "only a title"}', ("dead", "missing field(s) 'text'")),
    ("no_id", b'{"title": "no_id", "text": "x"}', ("dead", "missing field(s) 'doc_id'")),
    ("empty_doc", b'{"_id": "empty_doc", "title": "", "text": ""}', ("dead", "document has empty title and text")),
    ("blank_doc", b'{"_id": "blank_doc", "title": null, "text": " \\t\\n "}', ("dead", "document has empty title and text")),
    ("array", b'["array", "not an object"]', ("dead", "expected a JSON object, got list")),
    ("not_utf8", b'{"_id": "not_utf8", "text": "caf\xe9"}', ("dead", "not UTF-8")),
    ("surrogate", b'{"_id": "surrogate", "text": "lone \\ud800 surrogate"}', ("dead", "field 'text' is not valid Unicode")),
    ("huge", b'{"_id": "huge", "title": "", "text": "' + b"x" * (MAX_DOC_CHARS + 1) + b'"}', ("dead", "document too large: 5001 characters")),
    ("at_limit", b'{"_id": "at_limit", "title": "", "text": "' + b"y" * MAX_DOC_CHARS + b'"}', ("record", "at_limit")),
    ("deep", b'{"_id": "deep", "x": ' + b"[" * 100_000 + b"}", ("dead", "malformed JSON: nested too deeply")),
    ("long_int", b'{"_id": "long_int", "x": ' + b"9" * 5000 + b', "text": "t"}', ("dead", "malformed JSON: Exceeds the limit")),
    ("blank", b"   ", ("skip", None)),
    ("empty", b"", ("skip", None)),
]

QUERY_LINES = [
    ("q_good", b'{"_id": "q_good", "text": "a query"}', ("record", "q_good")),
    ("q_int", b'{"_id": 7, "text": "numeric id q_int"}', ("record", "7")),
    ("q_blank", b'{"_id": "q_blank", "text": "   "}', ("dead", "field 'text' is empty or whitespace")),
    ("q_null", b'{"_id": "q_null", "text": null}', ("dead", "field 'text' must be a string, got NoneType")),
    ("q_string_line", b'"q_string_line"', ("dead", "expected a JSON object, got str")),
]

QRELS_TSV_LINES = [
    ("header", b"\xef\xbb\xbfquery-id\tcorpus-id\tscore", ("skip", None)),  # BOM + header
    ("t_good", b"t_good\td1\t1", ("record", "t_good")),
    ("t_trec", b"t_trec\t0\td1\t2", ("record", "t_trec")),
    ("t_crlf", b"t_crlf\td1\t1\r", ("record", "t_crlf")),
    ("t_int_ids", b"42\t43\t1", ("record", "42")),
    ("t_two", b"t_two\td1", ("dead", "expected 3 tab-separated columns")),
    ("t_five", b"t_five\ta\tb\tc\t1", ("dead", "expected 3 tab-separated columns")),
    ("t_word", b"t_word\td1\trelevant", ("dead", "field 'score' is not a number")),
    ("t_nan", b"t_nan\td1\tnan", ("dead", "field 'score' is not a finite number")),
    ("t_inf", b"t_inf\td1\tinf", ("dead", "field 'score' is not a finite number")),
    ("t_empty_doc", b"t_empty_doc\t \t1", ("dead", "field 'doc_id' is empty")),
]

QRELS_JSONL_LINES = [
    ("j_good", b'{"query-id": "j_good", "corpus-id": "d1", "score": 2}', ("record", "j_good")),
    ("j_nan", b'{"query_id": "j_nan", "doc_id": "d1", "score": NaN}', ("dead", "field 'score' is not a finite number")),
    ("j_bool", b'{"query_id": "j_bool", "doc_id": "d1", "score": true}', ("dead", "field 'score' is not a number")),
    ("j_big", b'{"query_id": "j_big", "doc_id": "d1", "score": ' + b"9" * 400 + b"}", ("dead", "field 'score' is not a number")),
    ("j_noscore", b'{"query_id": "j_noscore", "doc_id": "d1"}', ("dead", "missing field(s) 'score'")),
]


def session(tag: str, **over: Any) -> bytes:
    s = {"session_id": tag, "query_id": "q", "query": "text", "timestamp": "t", "impressions": ["a", "b"], "clicks": ["a"]}
    s.update(over)
    return json.dumps(s).encode()


SESSION_LINES = [
    ("s_good", session("s_good"), ("record", "s_good")),
    ("s_int_lists", session("s_int_lists", impressions=[1, 2], clicks=[2]), ("record", "s_int_lists")),
    ("s_click_str", session("s_click_str", clicks="a"), ("dead", "field 'clicks' must be a list of ids, got str")),
    ("s_imp_dict", session("s_imp_dict", impressions={"a": 1}), ("dead", "field 'impressions' must be a list of ids, got dict")),
    ("s_imp_null", session("s_imp_null", impressions=None), ("dead", "missing field 'impressions'")),
    ("s_imp_elem_null", session("s_imp_elem_null", impressions=["a", None]), ("dead", "field 'impressions[]' must be a string id, got NoneType")),
    ("s_no_clicks", json.dumps({"session_id": "s_no_clicks", "query_id": "q", "impressions": []}).encode(), ("dead", "missing field(s) 'clicks'")),
    ("s_empty_query", session("s_empty_query", query=""), ("dead", "field 'query' is empty or whitespace")),
]

LINE_FILES = {  # label -> (kind, file name, cases, line separator)
    "corpus": ("corpus", "corpus.jsonl", CORPUS_LINES, b"\n"),
    "queries": ("queries", "queries.jsonl", QUERY_LINES, b"\r\n"),
    "qrels_tsv": ("qrels", "qrels.tsv", QRELS_TSV_LINES, b"\n"),
    "qrels_jsonl": ("qrels", "qrels.jsonl", QRELS_JSONL_LINES, b"\n"),
    "sessions": ("sessions", "log.jsonl", SESSION_LINES, b"\n"),
}
ID_FIELD = {"corpus": "doc_id", "queries": "query_id", "qrels": "query_id", "sessions": "session_id"}


def _gzip_lines(n: int) -> bytes:
    return b"".join(b'{"_id": "gz%d", "text": "compressed text %d"}\n' % (i, i) for i in range(n))


@pytest.fixture(scope="module")
def read(tmp_path_factory):
    """Every reader-level file case, read in one pipeline."""
    base = tmp_path_factory.mktemp("inputs")
    specs = {}
    for label, (kind, name, cases, sep) in LINE_FILES.items():
        (base / name).write_bytes(sep.join(line for _, line, _ in cases) + sep)
        specs[label] = (kind, str(base / name), MAX_DOC_CHARS)
    # gzip: a whole file, and one truncated mid-stream (its lines up to the break are kept)
    (base / "corpus.jsonl.gz").write_bytes(gzip.compress(_gzip_lines(50)))
    specs["gzip"] = ("corpus", str(base / "corpus.jsonl.gz"), None)
    whole = gzip.compress(_gzip_lines(3000))
    (base / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    specs["gzip_truncated"] = ("corpus", str(base / "truncated.jsonl.gz"), None)
    # a pattern mixing a gzip shard and a plain shard
    (base / "mixed").mkdir()
    (base / "mixed" / "part-0.jsonl.gz").write_bytes(gzip.compress(_gzip_lines(5)))
    (base / "mixed" / "part-1.jsonl").write_bytes(b'{"_id": "plain", "text": "uncompressed"}\n')
    specs["gzip_mixed"] = ("corpus", str(base / "mixed" / "part-*"), None)
    # old Mac line endings: the whole file is one line
    (base / "cr.jsonl").write_bytes(b'{"_id": "a", "text": "x"}\r{"_id": "b", "text": "y"}\r')
    specs["cr_only"] = ("corpus", str(base / "cr.jsonl"), None)
    # a whitespace-only (not 0-byte) file: no records, every line counted
    (base / "blank.jsonl").write_bytes(b"\n  \n\t\n")
    specs["blank_file"] = ("corpus", str(base / "blank.jsonl"), None)
    # Parquet rows: typed by the schema check, validated row by row
    pq.write_table(pa.table({
        "doc_id": pa.array(["p1", None, "p3", "p4"]), "title": pa.array([None, "t", "", "x"]),
        "text": pa.array(["ok", "null id", None, "z" * 30]),
    }), base / "corpus.parquet")
    specs["parquet_corpus"] = ("corpus", str(base / "corpus.parquet"), 20)
    pq.write_table(pa.table({
        "query_id": pa.array([1, 2, 3], pa.int64()), "doc_id": pa.array(["d", "d", "d"]).dictionary_encode(),
        "score": pa.array([1.0, float("nan"), float("-inf")]),
    }), base / "qrels.parquet")
    specs["parquet_qrels"] = ("qrels", str(base / "qrels.parquet"), None)
    pq.write_table(pa.table({
        "session_id": ["ps1", "ps2", "ps3"], "query_id": pa.array([5, 6, 7], pa.int32()),
        "impressions": pa.array([[1, 2], [3, None], []], pa.large_list(pa.int64())),
        "clicks": pa.array([[1], None, []], pa.list_(pa.int64())),
    }), base / "log.parquet")
    specs["parquet_sessions"] = ("sessions", str(base / "log.parquet"), None)
    return base, run_readers(specs, base)


def _outcome(got: Dict[str, Any], kind: str, tag: str, record_id: Optional[str]) -> List[Tuple[str, str]]:
    found = [("record", r[ID_FIELD[kind]]) for r in got["records"] if r[ID_FIELD[kind]] == record_id]
    found += [("dead", d["reason"]) for d in got["dead"] if _mentions(d["raw"], tag)]
    return found


def _mentions(raw: str, tag: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(tag)}(?!\w)", raw) is not None


LINE_CASES = [(label, tag, expected) for label, (_, _, cases, _) in LINE_FILES.items() for tag, _, expected in cases]


@pytest.mark.parametrize("label,tag,expected", LINE_CASES, ids=[f"{l}-{t}" for l, t, _ in LINE_CASES])
def test_each_bad_line_ends_as_described(read, label, tag, expected):
    base, got = read
    kind, name = LINE_FILES[label][:2]
    what, detail = expected
    found = _outcome(got[label], kind, tag, detail if what == "record" else None)
    if what == "skip":
        assert found == []
        return
    assert len(found) == 1, found  # exactly one outcome: never dropped, never doubled
    assert found[0][0] == what, found
    if what == "dead":
        assert detail in found[0][1], found
        (letter,) = [d for d in got[label]["dead"] if _mentions(d["raw"], tag)]
        assert letter["file"] == str(base / name) and letter["input"] == kind
        assert len(letter["raw"]) <= RAW_LIMIT


@pytest.mark.parametrize("label", list(LINE_FILES))
def test_every_line_of_a_file_is_accounted_for(read, label):
    _, got = read
    kind, _, cases, _ = LINE_FILES[label]
    c = got[label]["counters"]
    want = {"ok": sum(e[0] == "record" for _, _, e in cases), "dead": sum(e[0] == "dead" for _, _, e in cases),
            "skip": sum(e[0] == "skip" for _, _, e in cases)}
    assert c.get(f"{kind}_ok", 0) == len(got[label]["records"]) == want["ok"]
    assert c.get(f"{kind}_dead_letter", 0) == len(got[label]["dead"]) == want["dead"]
    assert c.get(f"{kind}_blank_or_header_lines", 0) == want["skip"]
    assert sum(want.values()) == len(cases)


def test_gzip_inputs(read):
    _, got = read
    assert sorted(r["doc_id"] for r in got["gzip"]["records"]) == sorted(f"gz{i}" for i in range(50))
    assert got["gzip"]["dead"] == []
    mixed = sorted(r["doc_id"] for r in got["gzip_mixed"]["records"])
    assert mixed == sorted([f"gz{i}" for i in range(5)] + ["plain"])
    # a truncated stream: the lines before the break are records, the break itself one dead letter
    truncated = got["gzip_truncated"]
    (letter,) = truncated["dead"]
    assert letter["file"].endswith("truncated.jsonl.gz")
    assert letter["reason"].startswith("unreadable file: EOFError") and f"after {len(truncated['records'])} lines" in letter["reason"]
    assert 0 < len(truncated["records"]) < 3000
    assert [r["doc_id"] for r in sorted(truncated["records"], key=lambda r: int(r["doc_id"][2:]))] == [
        f"gz{i}" for i in range(len(truncated["records"]))]
    assert truncated["counters"] == {"corpus_ok": len(truncated["records"]), "corpus_unreadable_files": 1}


def test_cr_only_and_blank_files(read):
    _, got = read
    (letter,) = got["cr_only"]["dead"]
    assert letter["reason"].startswith("malformed JSON") and "carriage returns" in letter["reason"]
    assert got["cr_only"]["records"] == []
    assert got["blank_file"]["records"] == got["blank_file"]["dead"] == []
    assert got["blank_file"]["counters"] == {"corpus_blank_or_header_lines": 3}


def test_parquet_rows(read):
    _, got = read
    corpus = got["parquet_corpus"]
    assert [r["doc_id"] for r in corpus["records"]] == ["p1"]
    assert sorted(d["reason"].split(":")[0] for d in corpus["dead"]) == [
        "document has empty title and text", "document too large", "field 'doc_id' must be a string id, got NoneType"]
    qrels = got["parquet_qrels"]
    assert qrels["records"] == [{"query_id": "1", "doc_id": "d", "score": 1.0}]  # int ids, dictionary strings
    assert sorted(d["reason"] for d in qrels["dead"]) == ["field 'score' is not a finite number: -inf", "field 'score' is not a finite number: nan"]
    sessions = got["parquet_sessions"]
    by_id = {r["session_id"]: r for r in sessions["records"]}
    assert set(by_id) == {"ps1", "ps3"}
    assert by_id["ps1"]["impressions"] == ["1", "2"] and by_id["ps1"]["query_id"] == "5" and by_id["ps1"]["query"] is None
    assert sorted(d["reason"] for d in sessions["dead"]) == ["field 'impressions[]' must be a string id, got NoneType"]


# --------------------------------------------------------------------------------------------
# Unusable inputs: InputError at construction, naming the option and the file
# --------------------------------------------------------------------------------------------


def _write_parquet(table: pa.Table):
    return lambda path: pq.write_table(table, path)


def _sessions_table(**over: Any) -> pa.Table:
    cols = {"session_id": ["s"], "query_id": ["q"], "impressions": [["a"]], "clicks": [["a"]]}
    cols.update(over)
    return pa.table(cols)


UNUSABLE = [  # (case, kind, file name, writer, error pattern)
    ("missing_path", "corpus", "nope-*.jsonl", None, r"--corpus: no file matches '.*nope-\*\.jsonl'"),
    ("empty_file", "corpus", "empty.jsonl", lambda p: p.write_bytes(b""), r"--corpus: .*empty\.jsonl: empty file \(0 bytes\)"),
    ("empty_parquet_file", "qrels", "empty.parquet", lambda p: p.write_bytes(b""), r"--qrels: .*empty\.parquet: empty file"),
    ("directory", "corpus", "folder", lambda p: p.mkdir(), r"--corpus: .*folder is a directory; pass a file pattern"),
    ("unknown_extension", "corpus", "corpus.csv", lambda p: p.write_text("_id,text\n1,x\n"), r"--corpus: .*corpus\.csv: unknown format"),
    ("tsv_corpus", "corpus", "corpus.tsv", lambda p: p.write_text("1\tx\n"), r"--corpus: TSV is only supported for qrels"),
    ("gz_not_gzip", "corpus", "corpus.jsonl.gz", lambda p: p.write_bytes(b'{"_id": "1", "text": "x"}\n'),
     r"--corpus: .*corpus\.jsonl\.gz: not gzip data"),
    ("not_parquet", "corpus", "corpus.parquet", lambda p: p.write_bytes(b"PAR1 but not really"),
     r"--corpus: .*corpus\.parquet: not a readable Parquet file"),
    ("parquet_missing_column", "corpus", "c.parquet", _write_parquet(pa.table({"doc_id": ["a"], "body": ["x"]})),
     r"--corpus: .*c\.parquet: missing column 'text'"),
    ("parquet_wrong_type", "corpus", "c.parquet", _write_parquet(pa.table({"doc_id": ["a"], "text": [1.5]})),
     r"--corpus: .*c\.parquet: column 'text' has type double, expected string"),
    ("parquet_binary_text", "corpus", "c.parquet", _write_parquet(pa.table({"doc_id": ["a"], "text": pa.array([b"x"])})),
     r"column 'text' has type binary"),
    ("parquet_string_score", "qrels", "q.parquet", _write_parquet(pa.table({"query_id": ["q"], "doc_id": ["d"], "score": ["1"]})),
     r"--qrels: .*q\.parquet: column 'score' has type string, expected double"),
    ("parquet_nested_double", "sessions", "s.parquet", _write_parquet(_sessions_table(impressions=pa.array([[1.5]]))),
     r"--sessions: .*s\.parquet: column 'impressions' has type list<element: double>, expected list<item: string>"),
    ("parquet_list_of_lists", "sessions", "s.parquet", _write_parquet(_sessions_table(clicks=pa.array([[["a"]]]))),
     r"column 'clicks' has type list<element: list<element: string>>"),
    ("parquet_not_a_list", "sessions", "s.parquet", _write_parquet(_sessions_table(impressions=["a"])),
     r"column 'impressions' has type string, expected list<item: string>"),
    ("parquet_struct_list", "sessions", "s.parquet", _write_parquet(_sessions_table(clicks=pa.array([[{"id": "a"}]]))),
     r"column 'clicks' has type list<element: struct"),
]


@pytest.mark.parametrize("case,kind,name,writer,pattern", UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_unusable_input_fails_before_running(tmp_path, case, kind, name, writer, pattern):
    path = tmp_path / name
    if writer:
        writer(path)
    with pytest.raises(InputError, match=pattern):
        ReadRecords(kind, str(path), kind)


def test_mixed_formats_and_all_empty_shards_fail(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    pq.write_table(pa.table({"doc_id": ["2"], "text": ["y"]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"--corpus: pattern mixes formats \['jsonl', 'parquet'\]"):
        ReadRecords("corpus", str(tmp_path / "*"), "corpus")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        (shards / f"part-{i}.jsonl").write_bytes(b"")
    with pytest.raises(InputError, match=r"part-0\.jsonl, .*part-2\.jsonl: empty files"):
        ReadRecords("corpus", str(shards / "part-*.jsonl"), "corpus")
    (shards / "part-1.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    assert len(ReadRecords("corpus", str(shards / "part-*.jsonl"), "corpus").files) == 3  # some empty shards are fine


def test_schemas_accept_what_they_should(tmp_path):
    """The schema check is strict, not fussy: integer ids, large and dictionary-encoded types pass."""
    pq.write_table(pa.table({"doc_id": pa.array([1], pa.int64()), "title": pa.array(["t"], pa.large_string()),
                             "text": pa.array(["x"]).dictionary_encode()}), tmp_path / "c.parquet")
    ReadRecords("corpus", str(tmp_path / "c.parquet"), "corpus")
    for schema in (CORPUS_SCHEMA, QRELS_SCHEMA, SESSIONS_SCHEMA):  # a file written with the declared schema itself
        kind = {CORPUS_SCHEMA: "corpus", QRELS_SCHEMA: "qrels", SESSIONS_SCHEMA: "sessions"}[schema]
        pq.write_table(schema.empty_table(), tmp_path / f"{kind}-0.parquet")
        pq.write_table(pa.Table.from_pylist([_valid_row(kind)], schema=schema), tmp_path / f"{kind}-1.parquet")
        ReadRecords(kind, str(tmp_path / f"{kind}-*.parquet"), kind)


def _valid_row(kind: str) -> Dict[str, Any]:
    return {
        "corpus": {"doc_id": "d", "title": None, "text": "x"},
        "qrels": {"query_id": "q", "doc_id": "d", "score": 1.0},
        "sessions": {"session_id": "s", "query_id": "q", "query": None, "timestamp": None, "impressions": ["d"], "clicks": []},
    }[kind]
