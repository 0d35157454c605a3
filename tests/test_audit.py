"""The audit sample and its estimate (transforms/audit_sample.py, tripleminer/audit.py): strata are
source x rank bucket, each sampled uniformly (min(N, population)) and deterministically given the
seed, n-tuple rows count only what the writer writes; the Wilson interval and the stratified
estimate match hand computations; `tripleminer audit --labels` prints and writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import apache_beam as beam
import pytest

from beam_helpers import run
from tripleminer import audit
from tripleminer.cli import main as cli_main
from tripleminer.transforms.audit_sample import (AuditSettings, WriteAuditSample, audit_items, rank_bucket, stratum,
                                                 written_negatives)


def negative(doc_id: str, source: str, rank=None, score=None) -> Dict[str, Any]:
    return {"doc_id": doc_id, "title": "", "text": f"text of {doc_id}", "source": source, "rank": rank, "score": score, "ce_score": None}


def row(qid: str, pos: str, negatives: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"query_id": qid, "query": f"query {qid}", "positive": {"doc_id": pos, "title": "", "text": "p", "source": "qrel", "score": 0.9},
            "negatives": negatives}


ROWS = [row(f"q{i}", f"p{i}", [negative(f"b{i}-{r}", "bm25", rank=r, score=10.0 - r) for r in (1, 5, 12, 40)]
            + [negative(f"r{i}", "random"), negative(f"a{i}", "ann", rank=200, score=0.5)]) for i in range(30)]


def test_rank_buckets_and_strata():
    assert [rank_bucket(r) for r in (None, 1, 10, 11, 30, 31, 100, 101, 300, 301, 1000, 1001, 5000)] == [
        "unranked", "1-10", "1-10", "11-30", "11-30", "31-100", "31-100", "101-300", "101-300", "301-1000", "301-1000", "1001+", "1001+"]
    assert stratum("bm25", 12) == "bm25/11-30" and stratum("gold", None) == "gold/unranked"


def test_ntuple_rows_count_only_what_the_writer_writes():
    r = ROWS[0]
    assert len(written_negatives(r, "nested", None)) == 6
    assert [n["doc_id"] for n in written_negatives(r, "n-tuple", 2)] == ["b0-1", "b0-5"]
    assert written_negatives(r, "n-tuple", 7) == []  # the writer drops rows with fewer than N
    (key, (_, aid, item)), *_ = audit_items(r, AuditSettings(3, 1))
    assert key == "bm25/1-10" and item["audit_id"] == aid and item["label"] is None and item["bi_encoder_score"] is None
    ann = [i for _, (_, _, i) in audit_items(r, AuditSettings(3, 1)) if i["source"] == "ann"][0]
    assert ann["bi_encoder_score"] == 0.5 and ann["positive_bi_encoder_score"] == 0.9


def sample_run(tmp_path: Path, seed: int, rows=ROWS) -> List[Dict[str, Any]]:
    out = tmp_path / f"seed{seed}"

    def build(p: beam.Pipeline) -> None:
        p | beam.Create(rows) | WriteAuditSample(AuditSettings(5, seed), str(out))

    run(build)
    return out


def lines(folder: Path, pattern: str) -> List[Dict[str, Any]]:
    return [json.loads(x) for f in sorted(folder.glob(pattern)) for x in f.read_text().splitlines() if x.strip()]


def test_the_sample_is_stratified_uniform_and_deterministic_given_the_seed(tmp_path):
    a, b, c = sample_run(tmp_path, 1), sample_run(tmp_path / "again", 1), sample_run(tmp_path, 2)
    strata = {s["stratum"]: s for s in lines(a, "audit_strata-*.jsonl")}
    assert {k: (s["population"], s["sampled"]) for k, s in strata.items()} == {
        "bm25/1-10": (60, 5), "bm25/11-30": (30, 5), "bm25/31-100": (30, 5), "random/unranked": (30, 5), "ann/101-300": (30, 5)}
    sample = lines(a, "audit-*.jsonl")
    assert len(sample) == 25 and len({s["audit_id"] for s in sample}) == 25
    assert all(s["stratum"] == stratum(s["source"], s["rank"]) for s in sample)
    ids = lambda folder: sorted(s["audit_id"] for s in lines(folder, "audit-*.jsonl"))  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    # a stratum smaller than N is taken whole
    small = sample_run(tmp_path / "small", 1, ROWS[:2])
    assert {s["stratum"]: s["sampled"] for s in lines(small, "audit_strata-*.jsonl")}["bm25/1-10"] == 4


def test_wilson_interval_matches_a_hand_computation():
    # 3 of 10 at 95%: p = 0.3, z = 1.959964; centre = (0.3 + z^2/20) / (1 + z^2/10),
    # half = z / (1 + z^2/10) * sqrt(0.3 * 0.7 / 10 + z^2 / 400)
    z = 1.959963984540054
    centre = (0.3 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.021 + z * z / 400)
    lo, hi = audit.wilson(3, 10)
    assert (lo, hi) == pytest.approx((centre - half, centre + half)) and (round(lo, 4), round(hi, 4)) == (0.1078, 0.6032)
    assert audit.wilson(0, 20)[0] == 0.0 and 0.16 < audit.wilson(0, 20)[1] < 0.17  # 0/20: [0, 0.161]
    assert audit.wilson(0, 0) == (0.0, 1.0)


def test_the_estimate_is_weighted_back_to_the_population():
    sample = [{"audit_id": f"a{i}", "stratum": "big"} for i in range(10)] + [{"audit_id": f"b{i}", "stratum": "small"} for i in range(10)]
    labels = {f"a{i}": int(i < 1) for i in range(10)} | {f"b{i}": int(i < 5) for i in range(10)}
    labels["b9"] = None  # unlabelled: left out of its stratum
    result = audit.estimate(sample, {"big": 900, "small": 100, "empty": 50}, labels)
    big, small = result["strata"]["big"], result["strata"]["small"]
    assert (big["labelled"], big["false_negatives"], big["rate"]) == (10, 1, 0.1)
    assert (small["labelled"], small["false_negatives"]) == (9, 5) and small["rate"] == pytest.approx(5 / 9)
    o = result["overall"]
    assert o["rate"] == pytest.approx(0.9 * 0.1 + 0.1 * 5 / 9)  # weights 900/1000 and 100/1000 (empty has no labels)
    var = 0.81 * 0.1 * 0.9 / 10 + 0.01 * (5 / 9) * (4 / 9) / 9
    assert o["effective_n"] == pytest.approx(o["rate"] * (1 - o["rate"]) / var)
    assert o["interval"] == pytest.approx(list(audit.wilson(o["rate"] * o["effective_n"], o["effective_n"])))
    assert o["uncovered_share"] == pytest.approx(50 / 1050) and result["unlabelled"] == 1
    assert result["strata"]["empty"]["rate"] is None


def test_audit_command_reads_labels_and_writes_the_estimate(tmp_path, capsys):
    out = sample_run(tmp_path, 1)
    sample = lines(out, "audit-*.jsonl")
    labels = tmp_path / "labels.jsonl"  # the audit file with labels filled in: every ann negative is relevant
    labels.write_text("".join(json.dumps({**s, "label": int(s["source"] == "ann")}) + "\n" for s in sample))
    assert cli_main(["audit", str(out), "--labels", str(labels)]) == 0
    printed = capsys.readouterr().out
    assert "ann/101-300" in printed and "overall (weighted)" in printed
    result = json.loads((out / audit.ESTIMATE_FILE).read_text())
    assert result["strata"]["ann/101-300"]["rate"] == 1.0 and result["strata"]["bm25/1-10"]["rate"] == 0.0
    assert result["overall"]["rate"] == pytest.approx(30 / 180)  # ann holds 30 of the 180 written negatives
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("audit_id\tlabel\n" + "".join(f"{s['audit_id']}\t1\n" for s in sample[:3]))
    assert audit.read_labels(str(tsv)) == {s["audit_id"]: 1 for s in sample[:3]}
    with pytest.raises(FileNotFoundError, match="--audit_sample"):
        audit.load_sample(str(tmp_path))
