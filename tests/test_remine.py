"""ANCE-style re-mining: each round mines with the previous round's trained checkpoint."""

import json

import pytest

from conftest import read_jsonl
from tripleminer.pipelines import remine

pytestmark = pytest.mark.slow  # SciFact and two rounds of model training


def test_two_rounds_mine_with_the_previous_model(scifact, tmp_path):
    lines = (scifact / "qrels" / "train.tsv").read_text().splitlines()
    qrels = lines[1:41]
    wanted_d = {l.split("\t")[1] for l in qrels}
    corpus = read_jsonl(scifact / "corpus.jsonl")
    docs = [c for c in corpus if c["_id"] in wanted_d] + [c for c in corpus if c["_id"] not in wanted_d][:80]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in docs))
    (tmp_path / "qrels.tsv").write_text("\n".join([lines[0]] + qrels) + "\n")
    out = tmp_path / "rounds"
    history = remine.run(
        2, str(out),
        ["--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(scifact / "queries.jsonl"),
         "--qrels", str(tmp_path / "qrels.tsv"), "--negatives", "bm25:1@1-30,ann:1@5-40",
         "--max_seq_length", "64", "--work_dir", str(tmp_path / "work"), "--output", "ignored"],
        ["--max_steps", "2", "--batch_size", "8", "--max_seq_length", "32", "--negatives", "ann:1", "--disable_tqdm"],
    )
    assert [h["round"] for h in history] == [0, 1]
    assert history[0]["mined_with"] == "default" and history[1]["mined_with"] == str(out / "round-0" / "model")
    for r in (0, 1):
        assert list((out / f"round-{r}").glob("triples-*.parquet"))
        assert (out / f"round-{r}" / "model" / "modules.json").exists()  # a sentence-transformers directory
    stats1 = json.loads((out / "round-1" / "stats.json").read_text())
    assert stats1["config"]["model"] == str(out / "round-0" / "model")
    assert stats1["counters"]["embed"]["doc_texts_embedded"] == len(docs)  # the new model re-embeds the corpus
    assert history[1]["negatives_per_source"]["ann"] > 0
