"""Readers: good records out, every bad one in the dead-letter output with its reason; unusable
inputs fail at construction with the file named."""

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tripleminer.io.readers import InputError, ReadRecords
from tripleminer.schemas.inputs import CORPUS_SCHEMA
from tripleminer.transforms.dedupe import DedupeById

BAD_CORPUS_LINES = [
    (b'{"_id": "1", "title": "T", "text": "good one"}', None),
    (b'{"_id": "2", "title": "T", "text": ', "malformed JSON"),
    (b'{"_id": 3.5, "text": "float id"}', "must be a string id"),
    (b'{"title": "no id", "text": "x"}', "missing field(s) 'doc_id'"),
    (b'{"_id": "4", "title": "", "text": "   "}', "empty title and text"),
    (b'{"_id": "5", "text": ["not", "text"]}', "must be a string"),
    (b'\xff\xfe{"_id": "6"}', "not UTF-8"),
    (b'["a", "list"]', "expected a JSON object"),
    (b"", None),  # blank lines are skipped and counted, not dead letters
]


def _reasons(dead):
    return [d["reason"] for d in dead]


def test_bad_jsonl_records_go_to_dead_letters(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in BAD_CORPUS_LINES) + b"\n")
    expected_reasons = [r for _, r in BAD_CORPUS_LINES if r]
    with TestPipeline() as p:
        out = p | ReadRecords("corpus", str(path), "corpus")
        assert_that(out["records"], equal_to([{"doc_id": "1", "title": "T", "text": "good one"}]), label="good")
        reasons = out["dead"] | beam.Map(lambda d: (d["file"], d["input"], d["reason"]))

        def check(found):
            assert len(found) == len(expected_reasons), found
            for file, kind, reason in found:
                assert file == str(path) and kind == "corpus"
            for want in expected_reasons:
                assert any(want in reason for _, _, reason in found), (want, found)

        assert_that(reasons, check, label="dead")


def test_qrels_tsv_with_header_and_bad_score(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\tbad\nq3\td3\n")
    with TestPipeline() as p:
        out = p | ReadRecords("qrels", str(path), "qrels")
        assert_that(out["records"], equal_to([{"query_id": "q1", "doc_id": "d1", "score": 1.0}]), label="good")
        assert_that(
            out["dead"] | beam.Map(lambda d: d["reason"].split(":")[0]),
            equal_to(["field 'score' is not a number", "expected 3 tab-separated columns (query-id, corpus-id, score), got 2"]),
            label="dead",
        )


def test_sessions_validate_lists(tmp_path):
    path = tmp_path / "log.jsonl"
    good = {"session_id": "s1", "query_id": "q", "query": "x", "timestamp": "t", "impressions": ["a"], "clicks": []}
    bad = dict(good, session_id="s2", clicks="a")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with TestPipeline() as p:
        out = p | ReadRecords("sessions", str(path), "query_log")
        assert_that(out["records"] | beam.Map(lambda s: s["session_id"]), equal_to(["s1"]), label="good")
        assert_that(out["dead"] | beam.Map(lambda d: d["reason"]), equal_to(["field 'clicks' must be a list of ids, got str"]), label="dead")


def test_parquet_rows_validated_and_sharded_glob_read(tmp_path):
    for i, rows in enumerate([[("a", "A", "alpha")], [("b", None, "beta"), ("c", "", "  ")]]):
        table = pa.Table.from_pylist([dict(zip(["doc_id", "title", "text"], r)) for r in rows], schema=CORPUS_SCHEMA.remove_metadata())
        pq.write_table(table, tmp_path / f"corpus-{i}.parquet")
    with TestPipeline() as p:
        out = p | ReadRecords("corpus", str(tmp_path / "corpus-*.parquet"), "corpus")
        assert_that(out["records"] | beam.Map(lambda d: d["doc_id"]), equal_to(["a", "b"]), label="good")
        assert_that(out["dead"] | beam.Map(lambda d: (d["file"].rsplit("/", 1)[-1], d["reason"])),
                    equal_to([("corpus-1.parquet", "document has empty title and text")]), label="dead")


def test_parquet_with_wrong_schema_fails_naming_the_file(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "body": ["text"]}), path)
    with pytest.raises(InputError, match=r"corpus\.parquet: missing column 'text'"):
        ReadRecords("corpus", str(path), "corpus")
    pq.write_table(pa.table({"doc_id": ["a"], "text": [1.5]}), path)
    with pytest.raises(InputError, match=r"column 'text' has type double"):
        ReadRecords("corpus", str(path), "corpus")


def test_missing_path_and_unknown_format_fail_clearly(tmp_path):
    with pytest.raises(InputError, match=r"--corpus: no file matches"):
        ReadRecords("corpus", str(tmp_path / "nope-*.jsonl"), "corpus")
    (tmp_path / "corpus.csv").write_text("x")
    with pytest.raises(InputError, match="unknown format"):
        ReadRecords("corpus", str(tmp_path / "corpus.csv"), "corpus")


def test_duplicate_ids_keep_one_and_dead_letter_conflicts():
    docs = [
        {"doc_id": "a", "title": "", "text": "same"},
        {"doc_id": "a", "title": "", "text": "same"},
        {"doc_id": "b", "title": "", "text": "version 2"},
        {"doc_id": "b", "title": "", "text": "version 1"},
    ]
    with TestPipeline() as p:
        out = p | beam.Create(docs) | DedupeById("corpus", "doc_id")
        assert_that(out["records"] | beam.Map(lambda d: (d["doc_id"], d["text"])), equal_to([("a", "same"), ("b", "version 1")]), label="kept")
        assert_that(out["dead"] | beam.Map(lambda d: d["reason"]), equal_to(["duplicate id 'b' with different content"]), label="dead")
