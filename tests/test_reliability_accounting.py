"""Accounting: on a mixed good/bad input, every input line, document, query, session and label is
either used or counted under a named reason, and the numbers in stats.json add up.

The input below is built so each bad record is of a known kind (comments say how each one ends);
the test checks both the per-case outcome and the reconciliation equations, which hold for any input.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

import pytest

from conftest import read_rows
from tripleminer.pipelines import mine

pytestmark = pytest.mark.slow  # the whole mine pipeline (mine.run), twice, on hand-made inputs

MAX_DOC_CHARS = 2000


def jl(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def corpus_lines() -> List[bytes]:
    docs = [jl({"_id": f"d{i}", "title": f"title {i}", "text": f"text about topic {i % 3} number {i}"}) for i in range(12)]
    return [b"\xef\xbb\xbf" + docs[0]] + docs[1:] + [  # a byte-order mark opens the file
        docs[3],                                                           # exact duplicate: counted
        jl({"_id": "d0", "title": "other", "text": "conflicting duplicate"}),  # dead letter (conflict)
        b'{"_id": "bad", "text": ',                                        # dead letter (malformed JSON)
        b'{"_id": "latin1", "text": "caf\xe9"}',                           # dead letter (not UTF-8)
        jl({"_id": "big", "title": "", "text": "word " * 600}),           # dead letter (too large)
        b"",                                                               # blank line: counted
        jl({"_id": 12, "title": "twelve", "text": "a number as id"}),     # good, id "12"
        b'{"_id": "sur", "text": "lone \\udc80 surrogate"}',               # dead letter (invalid Unicode)
    ]


def query_lines() -> List[bytes]:
    return [
        jl({"_id": "q1", "text": "topic 1"}),
        jl({"_id": "q2", "text": "topic 2"}),
        jl({"_id": "q3", "text": "   "}),           # dead letter (empty text); its qrel then has no text
        jl({"_id": "q9", "text": "a query with no labels"}),
        jl({"_id": "q1", "text": "topic 1"}),       # exact duplicate
        jl({"_id": "q2", "text": "topic two"}),     # dead letter (conflict; "topic 2" is kept)
        jl({"_id": 7, "text": "number seven"}),     # good, id "7"
        b"",
    ]


QRELS = [
    "query-id\tcorpus-id\tscore",  # header: counted
    "q1\td1\t1",
    "q1\tmissing-doc\t1",          # positive on an unknown document: dead letter
    "q2\td2\t1",
    "q2\td4\t0",                   # below --qrels_min_score: counted
    "q3\td5\t1",                   # q3 has no text: query dead letter, pair counted
    "q4\td6\tnan",                 # dead letter (not a finite number)
    "q8\tghost\t1",                # q8: no text and only an unknown document
    "q1\td1\t2",                   # the same pair judged twice: one row, the higher label
    "7\td7\t1",
    "q1\tbig\t1",                  # positive on the too-large document: dead letter
    "q5\td5",                      # dead letter (2 columns)
]


def session(sid: str, qid: str, query: Any, impressions: Any, clicks: Any) -> bytes:
    return jl({"session_id": sid, "query_id": qid, "query": query, "timestamp": "t", "impressions": impressions, "clicks": clicks})


def log_lines() -> List[bytes]:
    s1 = session("s1", "q2", "topic 2", ["d2", "d8", "d5", "ghost"], ["d2", "d11"])  # d11 not shown; ghost unknown
    return [
        s1,
        s1,                                                        # exact duplicate (replayed): counted, not re-aggregated
        session("s1", "q2", "topic 2", ["d2", "d8"], ["d8"]),     # conflicting duplicate: dead letter
        session("s2", "q2", "topic 2", None, ["d2"]),              # dead letter (missing impressions)
        session("s3", "q10", "log only query", ["d9"], []),        # log text only, no click: without positive
        session("s4", "q11", "log query eleven", ["d10"], ["d10", "nodoc"]),  # text from the log only: a row;
                                                                   # a click on an unknown document: dead letter
        session("s5", "q2", "topic 2", {"d1": 1}, []),             # dead letter (impressions is an object)
        session("s6", "q12", None, [], ["d3"]),                     # positive, but no text anywhere
        b"",
    ]


def write(path: Path, lines: List[bytes], sep: bytes = b"\n") -> int:
    data = sep.join(lines) + sep
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return len(lines)


class Mined(NamedTuple):
    """One mine run on the input above, shared by every test of the module (the run is the slow part)."""

    n_lines: Dict[str, int]  # physical lines written per input
    stats: Dict[str, Any]  # what mine.run returned
    on_disk: Dict[str, Any]  # stats.json
    dead: List[Dict[str, str]]  # every dead letter written
    rows: List[Dict[str, Any]]  # every row written


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> Mined:
    base = tmp_path_factory.mktemp("accounting")
    n_lines = {
        "corpus": write(base / "corpus.jsonl", corpus_lines(), b"\r\n"),  # CRLF line endings
        "queries": write(base / "queries.jsonl.gz", query_lines()),        # gzip
        "qrels": write(base / "qrels.tsv", [q.encode() for q in QRELS]),
        "sessions": write(base / "log.jsonl", log_lines()),
    }
    out = base / "out"
    stats = mine.run([
        "--corpus", str(base / "corpus.jsonl"), "--queries", str(base / "queries.jsonl.gz"),
        "--qrels", str(base / "qrels.tsv"), "--query_log", str(base / "log.jsonl"),
        "--output", str(out), "--work_dir", str(base / "work"), "--max_doc_chars", str(MAX_DOC_CHARS),
        "--negatives", "impression:2,bm25:2,random:1",
    ])
    on_disk = json.loads((out / "stats.json").read_text())
    dead = [json.loads(line) for f in sorted(out.glob("dead_letter-*.jsonl")) for line in f.read_text().splitlines()]
    return Mined(n_lines, stats, on_disk, dead, read_rows(out))


def test_stats_json_is_what_run_returned(mined):
    _, stats, on_disk, _, _ = mined
    assert on_disk == json.loads(json.dumps(stats))


def test_reconciliation_equations(mined):
    """The equations hold for any input; the right-hand numbers come from stats.json alone."""
    n_lines, _, stats, dead, rows = mined
    c: Dict[str, Dict[str, int]] = stats["counters"]
    read, dedupe, q, pos, texts = c["read"], c["dedupe"], c["queries"], c["positives"], c.get("texts", {})
    get = lambda ns, name: c.get(ns, {}).get(name, 0)  # noqa: E731 - absent counters are zero

    for kind in ("corpus", "queries", "qrels", "sessions"):
        # every physical line: a record, a dead letter, or a blank/header line
        assert n_lines[kind] == read.get(f"{kind}_ok", 0) + read.get(f"{kind}_dead_letter", 0) + read.get(f"{kind}_blank_or_header_lines", 0), kind
        assert read.get(f"{kind}_unreadable_files", 0) == 0
    for kind in ("corpus", "queries", "sessions"):
        # every valid record: the one kept for its id, or an exact or conflicting duplicate
        assert read[f"{kind}_ok"] == dedupe[f"{kind}_unique"] + get("dedupe", f"{kind}_exact_duplicates") + get("dedupe", f"{kind}_conflicting_duplicates"), kind
    # sessions: each unique session is aggregated once
    assert c["log"]["sessions"] == dedupe["sessions_unique"]
    # qrels: each valid judgement is a positive pair or below the threshold
    assert read["qrels_ok"] == pos["qrel_pairs"] + pos["qrel_pairs_below_threshold"]
    # the headline numbers are the counters'
    assert (stats["queries_with_positive"], stats["queries_without_positive"]) == (q["with_positive"], q.get("without_positive", 0))
    # every query with a positive gets one row per positive on a known document
    assert stats["rows"] >= q["with_positive"]
    # dead letters per input: the readers' plus the later stages'
    assert stats["dead_letters"]["corpus"] == read["corpus_dead_letter"] + dedupe["corpus_conflicting_duplicates"]
    assert stats["dead_letters"]["queries"] == read["queries_dead_letter"] + dedupe["queries_conflicting_duplicates"] + q["no_text_dead_letter"]
    assert stats["dead_letters"]["qrels"] == read["qrels_dead_letter"]
    assert stats["dead_letters"]["sessions"] == read["sessions_dead_letter"] + dedupe["sessions_conflicting_duplicates"]
    assert stats["dead_letters"]["positives"] == pos["unknown_doc_dead_letter"]
    assert len(dead) == sum(stats["dead_letters"].values())
    # rows: every sampled row is written unless its positive's text went missing
    assert len(rows) == stats["rows"] - texts.get("rows_dropped_positive_without_text", 0)
    written_negatives = sum(len(r["negatives"]) for r in rows)
    assert written_negatives == sum(stats["negatives_per_source"].values()) - texts.get("negatives_dropped_without_text", 0)
    assert stats["rows_with_fewer_negatives_than_asked"] == sum(len(r["negatives"]) < 5 for r in rows)


# Each case of the input above, where it must end (stats.json's numbers, dead letters, rows).


def test_corpus_lines_end_as_records_dead_letters_or_blank(mined):
    # corpus: 20 lines = 15 records + 4 dead letters + 1 blank; 15 = 13 unique + 1 exact + 1 conflict
    c = mined.on_disk["counters"]
    assert mined.n_lines["corpus"] == 20
    assert c["read"]["corpus_ok"] == 15 and c["read"]["corpus_dead_letter"] == 4 and c["read"]["corpus_blank_or_header_lines"] == 1
    assert c["dedupe"]["corpus_unique"] == 13


def test_query_lines_end_as_unique_records_or_dead_letters(mined):
    # queries: 8 lines = 6 + 1 + 1; 6 = 4 unique + 1 exact + 1 conflict
    c = mined.on_disk["counters"]
    assert (c["read"]["queries_ok"], c["read"]["queries_dead_letter"], c["dedupe"]["queries_unique"]) == (6, 1, 4)


def test_qrels_lines_end_as_positive_pairs_or_dead_letters(mined):
    # qrels: 12 lines = 9 + 2 + header; 9 = 8 positive pairs + 1 below threshold
    c = mined.on_disk["counters"]
    assert (c["read"]["qrels_ok"], c["read"]["qrels_dead_letter"], c["positives"]["qrel_pairs"]) == (9, 2, 8)


def test_session_lines_end_as_unique_sessions_or_dead_letters(mined):
    # sessions: 9 lines = 6 + 2 + 1 blank; 6 = 4 unique + 1 exact + 1 conflict
    c = mined.on_disk["counters"]
    assert (c["read"]["sessions_ok"], c["read"]["sessions_dead_letter"], c["dedupe"]["sessions_unique"]) == (6, 2, 4)


def test_log_clicks_and_impressions_are_counted(mined):
    c = mined.on_disk["counters"]
    assert c["log"]["clicks_not_in_impressions"] == 3 and c["log"]["sessions_without_impressions"] == 1
    assert c["log"]["sessions_without_click"] == 1  # s3
    assert c["candidates"]["impression_unknown_doc"] == 1
    assert c["positives"]["click_pairs"] == 5


def test_positive_pairs_end_as_rows_or_dead_letters(mined):
    # 11 distinct positive pairs = 5 rows + 4 on unknown documents + 2 of queries without text
    stats = mined.on_disk
    c = stats["counters"]
    assert stats["rows"] == 5 and c["positives"]["unknown_doc_dead_letter"] == 4
    assert c["positives"]["pairs_of_query_without_text"] == 2


def test_every_query_id_ends_in_exactly_one_outcome(mined):
    # every query id seen (queries file, log texts, labels) ends in exactly one named outcome:
    # 9 ids {q1, q2, 7, q11 | q9, q10 | q3, q12 | q8} = 4 with a positive + 2 without + 2 without text
    # + 1 with labels on unknown documents only
    stats = mined.on_disk
    c = stats["counters"]
    ids = {"q1", "q2", "q9", "7"} | {"q2", "q10", "q11"} | {"q1", "q2", "q3", "q8", "7", "q11", "q12"}
    outcomes = ["with_positive", "without_positive", "no_text_dead_letter", "no_text_and_only_unknown_docs"]
    assert sum(c["queries"][o] for o in outcomes) == len(ids) == 9
    assert (stats["queries_with_positive"], stats["queries_without_positive"]) == (4, 2)
    assert (c["queries"]["no_text_dead_letter"], c["queries"]["no_text_and_only_unknown_docs"]) == (2, 1)


def test_each_bad_record_is_a_dead_letter_with_its_reason(mined):
    reasons = sorted((d["input"], d["reason"].split(":")[0]) for d in mined.dead)
    assert reasons == sorted([
        ("corpus", "duplicate id 'd0' with different content"),
        ("corpus", "malformed JSON"),
        ("corpus", "not UTF-8"),
        ("corpus", "document too large"),
        ("corpus", "field 'text' is not valid Unicode"),
        ("queries", "field 'text' is empty or whitespace"),
        ("queries", "duplicate id 'q2' with different content"),
        ("queries", "query 'q3' has positives but no text in queries or log"),
        ("queries", "query 'q12' has positives but no text in queries or log"),
        ("qrels", "field 'score' is not a finite number"),
        ("qrels", "expected 3 tab-separated columns (query-id, corpus-id, score), got 2"),
        ("sessions", "missing field 'impressions'"),
        ("sessions", "field 'impressions' must be a list of ids, got dict"),
        ("sessions", "duplicate id 's1' with different content"),
        ("positives", "doc_id 'missing-doc' is not in the corpus"),
        ("positives", "doc_id 'big' is not in the corpus"),
        ("positives", "doc_id 'ghost' is not in the corpus"),
        ("positives", "doc_id 'nodoc' is not in the corpus"),
    ])


def test_dead_letters_have_every_field_and_reader_ones_name_their_file(mined):
    for d in mined.dead:
        assert set(d) == {"input", "file", "reason", "raw"} and d["raw"]
        if d["input"] in ("qrels",) or d["reason"].startswith(("malformed", "not UTF-8", "document too large")):
            assert d["file"].endswith((".tsv", ".jsonl")), d  # reader dead letters name their file


def rows_by_pair(mined: Mined) -> Dict[Tuple[str, str], Dict[str, Any]]:
    return {(r["query_id"], r["positive"]["doc_id"]): r for r in mined.rows}


def test_rows_are_the_positive_pairs_on_known_documents(mined):
    assert set(rows_by_pair(mined)) == {("q1", "d1"), ("q2", "d2"), ("q2", "d11"), ("7", "d7"), ("q11", "d10")}


def test_a_pair_judged_twice_keeps_the_higher_label(mined):
    assert rows_by_pair(mined)[("q1", "d1")]["positive"]["label"] == 2.0  # the higher of the two judgements


def test_a_pair_from_qrels_and_clicks_is_one_row_counted_once(mined):
    by_pair = rows_by_pair(mined)
    assert by_pair[("q2", "d2")]["positive"]["source"] == "qrel+click"
    assert by_pair[("q2", "d2")]["positive"]["clicks"] == 1  # the replayed s1 was not counted twice


def test_query_text_comes_from_the_queries_file_else_the_log(mined):
    by_pair = rows_by_pair(mined)
    assert by_pair[("q2", "d2")]["query"] == "topic 2" and by_pair[("q11", "d10")]["query"] == "log query eleven"


def test_bom_and_crlf_lines_are_read(mined):
    assert rows_by_pair(mined)[("q1", "d1")]["positive"]["text"].startswith("text about topic 1")  # first (BOM) and CRLF lines read


def test_negatives_are_distinct_never_a_positive_nor_a_dead_lettered_document(mined):
    by_pair = rows_by_pair(mined)
    for (qid, _), r in by_pair.items():
        ids = [n["doc_id"] for n in r["negatives"]]
        assert len(ids) == len(set(ids)) and not set(ids) & {p for (q2, p) in by_pair if q2 == qid}
        assert "big" not in ids and "sur" not in ids


def test_corpus_with_no_valid_document(tmp_path):
    """A corpus that is entirely bad runs to an empty output whose stats say why: every line a dead
    letter, every label on an unknown document."""
    write(tmp_path / "corpus.jsonl", [b'{"_id": 1}', b'{"text": "no id"}', b"not json", b'{"_id": "x", "text": " "}'])
    write(tmp_path / "qrels.tsv", [b"q1\td1\t1", b"q2\td2\t1"])
    write(tmp_path / "queries.jsonl", [jl({"_id": "q1", "text": "one"}), jl({"_id": "q2", "text": "two"})])
    out = tmp_path / "out"
    stats = mine.run(["--corpus", str(tmp_path / "corpus.jsonl"), "--qrels", str(tmp_path / "qrels.tsv"),
                      "--queries", str(tmp_path / "queries.jsonl"), "--output", str(out), "--work_dir", str(tmp_path / "work"),
                      "--negatives", "bm25:2,random:1"])
    assert stats["rows"] == 0 and stats["dead_letters"] == {"corpus": 4, "positives": 2}
    assert stats["queries_without_positive"] == 2
    assert (out / "stats.json").exists() and sum(1 for f in out.glob("dead_letter-*") for _ in f.open()) == 6
