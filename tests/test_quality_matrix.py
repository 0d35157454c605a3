"""Pure helpers of benchmarks/quality_matrix.py: the training-pair cap, mix arithmetic, the tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
qm = pytest.importorskip("quality_matrix")


def qrels(per_query: dict) -> dict:
    return {q: {f"{q}-d{i}": 1 for i in range(n)} for q, n in per_query.items()}


def test_cap_pairs_per_query_and_total_cover_queries_first():
    judged = qrels({"a": 5, "b": 1, "c": 3, "d": 4})
    pairs = qm.cap_pairs(judged, per_query=2, max_rows=5, seed=13)
    assert len(pairs) == 5
    assert all(doc in judged[q] for q, doc in pairs)
    per = {q: sum(1 for p, _ in pairs if p == q) for q in judged}
    assert all(n >= 1 for n in per.values()) and max(per.values()) <= 2  # every query's first pick comes first


def test_cap_pairs_is_seeded_and_none_means_no_cap():
    judged = qrels({f"q{i}": 6 for i in range(20)})
    assert qm.cap_pairs(judged, 2, 30, seed=13) == qm.cap_pairs(judged, 2, 30, seed=13)
    assert qm.cap_pairs(judged, 2, 30, seed=13) != qm.cap_pairs(judged, 2, 30, seed=14)
    assert len(qm.cap_pairs(judged, None, None, seed=13)) == 120


def test_mix_helpers():
    assert qm.mix_total("impression:2,bm25:4@1-100,gold:1,random:1") == 8
    assert qm.without_source("impression:2,bm25:4@1-100,gold:1,random:1", "impression") == (
        "bm25:4@1-100/random,gold:1/random,random:1/random")
    assert qm.mix_total(qm.without_source("impression:2,random:1", "impression")) == 1


def test_mean_spread():
    assert qm.mean_spread([]) == ""
    assert qm.mean_spread([0.5]) == "0.5000"
    assert qm.mean_spread([0.5, 0.7, 0.6]) == "0.6000 [0.5000-0.7000]"


def record(row: str, recipe: str, seed, ndcg: float) -> dict:
    return {"dataset": "scifact", "row": row, "recipe": recipe, "seed": seed, "quick": False, "nDCG@10": ndcg,
            "Recall@100": 0.9, "MRR@10": 0.6, "train_s": 10.0, "mine_s": 1.0, "mix": "none", "train_rows": 9,
            "train_dtype": "torch.bfloat16", "data": {"eval_queries": 3, "eval_docs": 9, "train_queries": 2,
                                                      "train_pairs_judged": 4, "cap_per_query": None, "cap_rows": None},
            "settings": {"eval_max_seq_length": 256, "eval_bf16": True, "ours_epochs": 3, "ours_lr": 5e-5,
                         "ours_mixed_precision": "no"}}


def test_render_targets_and_extra_seeds():
    records = [record("zero-shot", qm.NO_RECIPE, None, 0.60), record("in-batch", "st", 13, 0.660),
               record("peer", "st", 13, 0.640), record("tripleminer-default", "st", 13, 0.668)]
    text = qm.render(records, ["st"], margin=0.005, extra_below=0.01)
    assert "| zero-shot | - | 0.6000 |" in text
    assert "| scifact | st | +0.0080 | +0.0280 | yes |" in text
    assert "lead over in-batch under 0.01" in text and "peer under" not in text
    assert qm.lead(records, "scifact", "st", "peer", False) == pytest.approx(0.028)


def best(spec: str, seed: int, ndcg: float) -> dict:
    return dict(record("tripleminer-best", "st", seed, ndcg), best_spec=spec, mix=spec.split()[0])


def test_best_row_is_the_best_spec_tried_and_every_spec_is_listed():
    records = [record("in-batch", "st", 13, 0.660), best("bm25:1 --pos_aware_ratio 0.95", 13, 0.671),
               best("ann:2", 13, 0.690), best("ann:2", 14, 0.650), best("random:3", 13, 0.662)]
    chosen = qm.cell_values(records, "scifact", "tripleminer-best", "st", False)
    assert [r["best_spec"] for r in chosen] == ["bm25:1 --pos_aware_ratio 0.95"]  # mean 0.671 beats ann:2's 0.670
    text = qm.render(records, ["st"], margin=0.005, extra_below=0.01)
    assert "| tripleminer-best | 1 | 0.6710 |" in text
    assert "| `ann:2` | 0.6700 [0.6500-0.6900] | 13, 14 |" in text
    assert "| `random:3` | 0.6620 | 13 |" in text
    assert qm.cell_key(chosen[0]) != qm.cell_key(best("ann:2", 13, 0.690))


def test_best_spec_names_mix_and_mine_args():
    args = qm.parse_args(["--best_mix", "bm25:2@10-50", "--best_mine_args", "--pos_aware_ratio 0.95"])
    assert qm.best_spec(args) == "bm25:2@10-50 --pos_aware_ratio 0.95"
    assert qm.best_spec(qm.parse_args([])) == qm.BEST_MIX


def test_cap_pairs_picks_what_the_miner_mines_under_max_positives_per_query():
    from tripleminer.transforms.sample import MixPolicy

    judged = qrels({f"q{i}": 7 for i in range(10)})
    pairs = qm.cap_pairs(judged, per_query=2, max_rows=None, seed=13)
    policy = MixPolicy(max_positives=2)
    for q, docs in judged.items():
        mined = policy.row_positives(13, q, [{"doc_id": d} for d in docs]).rows
        assert {(q, p["doc_id"]) for p in mined} == {pair for pair in pairs if pair[0] == q}


def test_miner_picks_keep_the_miners_rows_capped_first_rows_first(tmp_path):
    """The tripleminer rows of a capped dataset: the pairs the miner wrote, every query's first row
    before any query's second, at most max_rows."""
    rows = [qm.nested_row(f"q{i}", "query", f"d{i}-{j}", "passage", []) for i in range(5) for j in range(2)]
    shard = tmp_path / "triples-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=qm.NESTED_SCHEMA), shard)
    assert qm.miner_picks([str(shard)], None, 13) == {(r["query_id"], r["positive"]["doc_id"]) for r in rows}
    picked = qm.miner_picks([str(shard)], 7, 13)
    assert len(picked) == 7 and {q for q, _ in picked} == {f"q{i}" for i in range(5)}
    assert picked == qm.miner_picks([str(shard)], 7, 13) and picked != qm.miner_picks([str(shard)], 7, 14)


def test_cells_of_another_precision_are_refused(tmp_path, monkeypatch):
    """A machine without bf16 must not add fp32 cells to a table of bf16 ones (nor the reverse)."""
    monkeypatch.setattr(qm, "cpu_bf16", lambda: True)
    args = qm.parse_args(["--results", str(tmp_path / "r.json"), "--datasets", "scifact", "--rows", "zero-shot",
                          "--recipes", "st"])
    cell = {"dataset": "nfcorpus", "row": "in-batch", "recipe": "st", "seed": 13, "quick": False,
            "train_dtype": "torch.bfloat16", "settings": {"eval_bf16": True}}
    assert qm.precision_mismatch([cell], args) == []
    assert qm.precision_mismatch([{**cell, "train_dtype": "torch.float32"}], args) == ["nfcorpus in-batch st seed 13"]
    assert qm.precision_mismatch([{**cell, "quick": True, "train_dtype": "torch.float32"}], args) == []
    fp32_eval = qm.parse_args(["--results", str(tmp_path / "r.json"), "--eval_precision", "fp32"])
    assert qm.precision_mismatch([cell], fp32_eval) == ["nfcorpus in-batch st seed 13"]
    qm.append_result(Path(args.results), {**cell, "settings": {"eval_bf16": False}})
    with pytest.raises(SystemExit, match="another precision"):
        qm.run_matrix(args)
