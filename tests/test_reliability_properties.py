"""Property-based tests (hypothesis) of the readers and of the Beam-level sampling.

Readers: any bytes and any JSON value in any field end as a schema-conforming record, a dead letter
with a reason, or a counted blank line: never an exception, never a lost or doubled line.
Sampling: run through Beam with records, candidate lists and each list's entries in two different
orders, the rows are identical, equal to the pure sampler's, never contain a positive of the query
or a repeated document, and respect the rank windows.
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
from pathlib import Path
from typing import Any, Dict

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tripleminer.io.readers import DEAD, ReadRecords, _ParseLine
from tripleminer.schemas.outputs import RAW_LIMIT
from tripleminer.schemas.inputs import BEIR_ALIASES, INPUT_SCHEMAS, VALIDATORS, InvalidRecord, validate_doc
from tripleminer.transforms.common import candidates
from tripleminer.transforms.positives import positive
from tripleminer.schemas.mix import HARD_SOURCES, parse_mix
from tripleminer.transforms.sample import SampleNegatives, sample_negatives

KINDS = ("corpus", "queries", "qrels", "sessions")
FIELDS = {kind: [f.name for f in INPUT_SCHEMAS[kind]] + list(BEIR_ALIASES[kind]) for kind in KINDS}

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                           max_leaves=6)
ids = st.text(max_size=6) | st.integers(-5, 10**12) | st.sampled_from(["", " ", "\ud800", "d1", "\u00e9"])
plausible = ids | st.lists(ids, max_size=4) | st.sampled_from(["nan", "inf", "1", "0.5", " ", "x"]) | json_values


def records(kind: str):
    return st.dictionaries(st.sampled_from(FIELDS[kind]), plausible, max_size=len(FIELDS[kind])) | json_values


def conforms(kind: str, record: Dict[str, Any]) -> None:
    """A validated record fits its declared Arrow schema and validates again to itself."""
    pa.Table.from_pylist([record], schema=INPUT_SCHEMAS[kind])  # raises on a wrong type, a null or bad Unicode
    assert VALIDATORS[kind](record) == record
    for f in INPUT_SCHEMAS[kind]:
        if not f.nullable and pa.types.is_string(f.type) and f.name != "text":
            assert record[f.name].strip(), f.name  # ids are never blank
    if kind == "corpus":
        assert (record["title"] + record["text"]).strip()  # a title-only document is fine, an empty one not
    if kind == "queries":
        assert record["text"].strip()


# --------------------------------------------------------------------------------------------
# Validators and line parsing, without Beam (many examples, fast)
# --------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_validators_accept_a_conforming_record_or_raise_invalid_record(kind, data):
    record = data.draw(records(kind))
    try:
        out = VALIDATORS[kind](record)
    except InvalidRecord as err:
        assert str(err)
        return
    conforms(kind, out)


@settings(max_examples=200, deadline=None)
@given(title=st.text(max_size=30), text=st.text(max_size=30), limit=st.integers(0, 40))
def test_document_size_bound(title, text, limit):
    record = {"_id": "d", "title": title, "text": text}
    try:
        out = validate_doc(record, max_chars=limit)
    except InvalidRecord as err:
        too_large = bool(limit) and len(title) + len(text) > limit
        assert too_large == str(err).startswith("document too large") or "empty" in str(err) or "Unicode" in str(err)
        return
    assert not limit or len(out["title"]) + len(out["text"]) <= limit


def _line_strategy(kind: str, fmt: str):
    json_line = records(kind).map(lambda r: json.dumps(r, allow_nan=True).encode())
    tsv_line = st.lists(st.text(max_size=6), min_size=0, max_size=5).map(lambda cols: "\t".join(cols).encode("utf-8", "surrogatepass"))
    raw = st.binary(max_size=60)
    decorated = st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf"]), json_line if fmt == "jsonl" else tsv_line, st.sampled_from([b"", b"\r", b"  "]))
    return (raw | decorated.map(b"".join) | (json_line if fmt == "jsonl" else tsv_line)).map(lambda b: b.replace(b"\n", b" "))


@settings(max_examples=400, deadline=None)
@given(case=st.sampled_from([(k, "jsonl") for k in KINDS] + [("qrels", "tsv")]), data=st.data())
def test_any_line_is_a_record_a_dead_letter_or_a_counted_skip(case, data):
    kind, fmt = case
    raw = data.draw(_line_strategy(kind, fmt))
    outs = list(_ParseLine(kind, fmt, max_doc_chars=50).process(("in/file", raw)))
    assert len(outs) <= 1  # never two outcomes for one line
    if not outs:  # skipped: only blank lines and qrels headers
        text = raw.decode("utf-8").removeprefix("\ufeff")
        assert not text.strip() or (fmt == "tsv" and text.lower().startswith(("query-id", "query_id", "qid")))
        return
    (out,) = outs
    if isinstance(out, beam.pvalue.TaggedOutput):
        assert out.tag == DEAD
        letter = out.value
        assert letter["input"] == kind and letter["file"] == "in/file" and letter["reason"] and len(letter["raw"]) <= RAW_LIMIT
        json.dumps(letter, ensure_ascii=False).encode("utf-8")  # dead letters are writable
    else:
        conforms(kind, out)


# --------------------------------------------------------------------------------------------
# Readers in Beam: whole files of arbitrary lines, plain, CRLF or gzip
# --------------------------------------------------------------------------------------------


def _run(p: beam.Pipeline):
    result = p.run()
    result.wait_until_finish()
    return result


def _counters(result, namespace: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for c in result.metrics().query()["counters"]:
        if c.key.metric.namespace == namespace:
            value = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + value
    return out


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), compress=st.booleans(), crlf=st.booleans(), data=st.data())
def test_reader_accounts_for_every_line_of_any_file(tmp_path, kind, compress, crlf, data):
    lines = data.draw(st.lists(_line_strategy(kind, "jsonl"), min_size=1, max_size=40))
    sep = b"\r\n" if crlf else b"\n"
    payload = sep.join(lines) + sep
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / ("input.jsonl.gz" if compress else "input.jsonl")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    p = beam.Pipeline(options=PipelineOptions([]))
    out = p | ReadRecords(kind, str(path), kind)
    counted = (
        (out["records"] | "R" >> beam.Map(lambda _: "record"), out["dead"] | "D" >> beam.Map(lambda _: "dead"))
        | beam.Flatten() | beam.combiners.Count.PerElement()
        | beam.Map(json.dumps) | beam.io.WriteToText(str(folder / "counts"), shard_name_template="")
    )
    del counted
    c = _counters(_run(p), "read")
    emitted = dict(json.loads(line) for line in (folder / "counts").read_text().splitlines())
    assert c.get(f"{kind}_ok", 0) == emitted.get("record", 0)
    assert c.get(f"{kind}_dead_letter", 0) == emitted.get("dead", 0)
    assert c.get(f"{kind}_ok", 0) + c.get(f"{kind}_dead_letter", 0) + c.get(f"{kind}_blank_or_header_lines", 0) == len(lines)


# --------------------------------------------------------------------------------------------
# Sampling in Beam, with reshuffled inputs
# --------------------------------------------------------------------------------------------

MIX = parse_mix("impression:2,bm25:3@2-20,gold:1,random:2")


@st.composite
def sampling_inputs(draw):
    n_docs = draw(st.integers(5, 40))
    docs = [f"d{i}" for i in range(n_docs)]
    recs, lists = [], []
    for q in range(draw(st.integers(1, 5))):
        qid = f"q{q}"
        pos = draw(st.lists(st.sampled_from(docs), min_size=1, max_size=3, unique=True))
        recs.append({"query_id": qid, "query": f"query {q}", "positives": [positive(d, "qrel", label=1.0) for d in pos], "candidates": []})
        for source in ("impression", "bm25", "gold", "random"):
            if not draw(st.booleans()):
                continue  # a source with no candidates for this query
            pool = draw(st.lists(st.sampled_from(docs), max_size=30, unique=True))  # may include positives
            ranked = source in ("impression", "bm25")
            lists.append((qid, candidates(source, pool, ranks=range(1, len(pool) + 1) if ranked else None,
                                          scores=[float(len(pool) - i) for i in range(len(pool))] if ranked else None)))
    return draw(st.integers(0, 2**31)), recs, lists


def _permuted(cand: Dict[str, Any], rng: random.Random) -> Dict[str, Any]:
    order = list(range(len(cand["doc_ids"])))
    rng.shuffle(order)
    return {k: [v[i] for i in order] if isinstance(v, list) else v for k, v in cand.items()}


@pytest.mark.slow  # not data nor a model: 5 hypothesis examples, each a Beam pipeline (~10 s together)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(inputs=sampling_inputs(), shuffle_seed=st.integers(0, 2**31))
def test_beam_sampling_is_order_independent_and_keeps_the_invariants(tmp_path, inputs, shuffle_seed):
    seed, recs, lists = inputs
    rng = random.Random(shuffle_seed)
    orders = {"a": (recs, lists)}
    recs_b, lists_b = list(recs), [(q, _permuted(c, rng)) for q, c in lists]
    rng.shuffle(recs_b)
    rng.shuffle(lists_b)
    orders["b"] = (recs_b, lists_b)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    p = beam.Pipeline(options=PipelineOptions([]))
    for name, (r, l) in orders.items():
        rows = (p | f"Records{name}" >> beam.Create(r), p | f"Lists{name}" >> beam.Create(l)) | f"Sample{name}" >> SampleNegatives(seed, MIX)
        rows | f"Json{name}" >> beam.Map(json.dumps, sort_keys=True) | f"Write{name}" >> beam.io.WriteToText(str(folder / name), shard_name_template="")
    _run(p)
    got = {name: sorted((folder / name).read_text().splitlines()) for name in orders}
    assert got["a"] == got["b"]  # the same rows whatever the order of records, lists and list entries
    rows = [json.loads(line) for line in got["a"]]
    assert len(rows) == sum(len(r["positives"]) for r in recs)  # one row per (query, positive)
    pools = {q: {} for q in (r["query_id"] for r in recs)}
    for q, c in lists:
        pools[q][c["source"]] = c
    positives_of = {r["query_id"]: [p["doc_id"] for p in r["positives"]] for r in recs}
    for row in rows:
        qid, negs = row["query_id"], row["negatives"]
        ids = [n["doc_id"] for n in negs]
        assert len(ids) == len(set(ids))  # no document twice in one row
        assert not set(ids) & set(positives_of[qid])  # never a positive of the query
        assert all(2 <= n["rank"] <= 20 for n in negs if n["source"] == "bm25")  # window respected
        for m in MIX:  # hard sources give at most their count; easy ones also top up a short row (backfill)
            assert m.source not in HARD_SOURCES or sum(n["source"] == m.source for n in negs) <= m.count
        assert len(negs) <= sum(m.count for m in MIX)
        want = sample_negatives(seed, qid, row["positive"]["doc_id"], positives_of[qid], pools[qid], MIX)
        assert negs == json.loads(json.dumps(want))  # Beam wiring = the pure sampler
