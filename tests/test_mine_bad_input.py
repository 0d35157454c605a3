"""A tiny hand-made dataset with every kind of bad record: each one is either used or accounted
for (dead letter with its reason, or a named counter), and the good ones still make triples."""

import json

import pytest

from conftest import read_rows
from tripleminer.pipelines import mine

pytestmark = pytest.mark.slow  # the whole mine pipeline (mine.run), on hand-made inputs


def write_lines(path, lines):
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")


def test_bad_records_are_dead_lettered_and_counted(tmp_path):
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"text about topic {i % 3} number {i}"} for i in range(12)]
    write_lines(tmp_path / "corpus.jsonl", [json.dumps(d) for d in docs] + [
        '{"_id": "d0", "title": "other", "text": "conflicting duplicate"}',
        '{"_id": "bad", "text": ',
        b"\xff\xfe not utf8",
    ])
    write_lines(tmp_path / "queries.jsonl", [
        json.dumps({"_id": "q1", "text": "topic 1"}),
        json.dumps({"_id": "q2", "text": "topic 2"}),
        json.dumps({"_id": "q3", "text": "   "}),
        json.dumps({"_id": "q9", "text": "a query with no labels"}),
    ])
    write_lines(tmp_path / "qrels.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\tmissing-doc\t1", "q2\td2\t1", "q3\td5\t1", "q2\td4\t0"])
    session = {"session_id": "s1", "query_id": "q2", "query": "topic 2", "timestamp": "t",
               "impressions": ["d2", "d8", "d5", "ghost"], "clicks": ["d2", "d11"]}
    write_lines(tmp_path / "log.jsonl", [json.dumps(session), json.dumps(dict(session, session_id="s2", impressions=None))])
    out = tmp_path / "out"
    stats = mine.run([
        "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
        "--qrels", str(tmp_path / "qrels.tsv"), "--query_log", str(tmp_path / "log.jsonl"),
        "--output", str(out), "--work_dir", str(tmp_path / "work"), "--negatives", "impression:2,bm25:2,random:1",
    ])
    dead = [json.loads(l) for f in out.glob("dead_letter-*.jsonl") for l in f.read_text().splitlines()]
    reasons = sorted((d["input"], d["reason"].split(":")[0]) for d in dead)
    assert reasons == sorted([
        ("corpus", "duplicate id 'd0' with different content"),
        ("corpus", "malformed JSON"),
        ("corpus", "not UTF-8"),
        ("queries", "field 'text' is empty or whitespace"),
        ("positives", "doc_id 'missing-doc' is not in the corpus"),
        ("queries", "query 'q3' has positives but no text in queries or log"),
        ("sessions", "missing field 'impressions'"),
    ])
    c = stats["counters"]
    assert stats["dead_letters"] == {"corpus": 3, "queries": 2, "positives": 1, "sessions": 1}
    assert c["positives"]["qrel_pairs_below_threshold"] == 1
    assert c["log"]["clicks_not_in_impressions"] == 1
    assert c["candidates"]["impression_unknown_doc"] == 1  # "ghost" was shown but is not in the corpus
    assert stats["queries_without_positive"] == 1  # q9
    rows = read_rows(out)
    pairs = sorted((r["query_id"], r["positive"]["doc_id"]) for r in rows)
    assert pairs == [("q1", "d1"), ("q2", "d11"), ("q2", "d2")]
    for r in rows:
        ids = {n["doc_id"] for n in r["negatives"]}
        assert not ids & {"d1"} if r["query_id"] == "q1" else not ids & {"d2", "d11"}
        if r["query_id"] == "q2":
            assert {n["doc_id"] for n in r["negatives"] if n["source"] == "impression"} == {"d8", "d5"}
