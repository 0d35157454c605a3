"""End to end on a slice of the shared SciFact corpus: the pretext pipeline writes the mining
pipeline's schema, its positives are exactly the generators' pairs, no negative is the pair's own
document (same_doc passages aside, which are other passages of it by design), its counts reconcile
with the rows, and its output does not depend on the runner mode."""

from __future__ import annotations

import collections
import itertools
import json
import re

import pyarrow.parquet as pq
import pytest

from conftest import canonical, read_rows
from tripleminer import cli
from tripleminer.io.writers import OutputExistsError
from tripleminer.pipelines import pretext
from tripleminer.schemas.inputs import validate_doc
from tripleminer.schemas.mix import HARD_SOURCES
from tripleminer.schemas.outputs import NESTED_SCHEMA, read_run_metadata
from tripleminer.transforms import pretext as pt

N_DOCS = 400
SEED = 5
GENERATORS = "ict:1,crop:0.5,span:1"
MIX = "same_doc:1,bm25:2@1-50,gold:1,random:1"
ASKED = {"same_doc": 1, "bm25": 2, "gold": 1, "random": 1}


@pytest.fixture(scope="module")
def corpus(scifact, tmp_path_factory):
    """The first N_DOCS SciFact abstracts, as a corpus file and as validated docs."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with (scifact / "corpus.jsonl").open(encoding="utf-8") as f:
        lines = list(itertools.islice(f, N_DOCS))
    path.write_text("".join(lines), encoding="utf-8")
    return path, {d["doc_id"]: d for d in (validate_doc(json.loads(line)) for line in lines)}


def args(corpus_path, out, work, *extra):
    return ["--corpus", str(corpus_path), "--output", str(out), "--work_dir", str(work),
            "--generators", GENERATORS, "--negatives", MIX, "--seed", str(SEED), *extra]


@pytest.fixture(scope="module")
def mined(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("pretext")
    stats = pretext.run(args(corpus[0], base / "out", base / "work", "--num_shards", "2"))
    return base, stats, read_rows(base / "out")


def expected_pairs(docs):
    """The generators' pairs, computed with their pure functions, without the pipeline."""
    configs = {pt.ICT: (pt.ict_pairs, pt.IctConfig()), pt.CROP: (pt.crop_pairs, pt.CropConfig(rate=0.5)),
               pt.SPAN: (pt.span_pairs, pt.SpanConfig())}
    return {pair["query_id"]: pair for fn, config in configs.values() for doc in docs.values()
            for pair in fn(doc, SEED, config)}


@pytest.mark.slow
def test_schema_and_run_metadata(mined):
    base, _, _ = mined
    files = sorted((base / "out").glob("triples-*.parquet"))
    assert [f.name for f in files] == ["triples-00000-of-00002.parquet", "triples-00001-of-00002.parquet"]
    schema = pq.read_schema(files[0])
    assert schema.remove_metadata().equals(NESTED_SCHEMA)
    meta = read_run_metadata(schema)
    assert meta["seed"] == SEED and meta["generators"] == GENERATORS and meta["negatives"] == MIX


@pytest.mark.slow
def test_positives_are_the_generators_pairs(mined, corpus):
    _, _, rows = mined
    want = expected_pairs(corpus[1])
    assert sorted(r["query_id"] for r in rows) == sorted(want)
    for r in rows:
        pair = want[r["query_id"]]
        source, doc_id, _ = r["query_id"].split(":")
        assert r["positive"]["source"] == source and r["positive"]["doc_id"] == doc_id
        assert r["query"] == pair["query"] and r["positive"]["text"] == pair["positives"][0]["text"]


@pytest.mark.slow
def test_negatives_never_the_source_document(mined, corpus):
    _, _, rows = mined
    docs = corpus[1]
    want = expected_pairs(docs)
    for r in rows:
        doc_id = r["positive"]["doc_id"]
        negs = r["negatives"]
        ids = [n["doc_id"] for n in negs]
        assert len(ids) == len(set(ids)) and doc_id not in ids, r["query_id"]
        assert all(n["text"] for n in negs)
        per_source = collections.Counter(n["source"] for n in negs)
        # hard sources give at most what was asked; the easy ones top up what the hard ones lacked (backfill)
        assert all(per_source[s] <= ASKED[s] for s in per_source if s in HARD_SOURCES), per_source
        assert len(negs) == sum(ASKED.values()), per_source
        for n in negs:
            if n["source"] == "same_doc":
                # another passage of the same document, one the pair's own record offered
                m = re.fullmatch(r"(.+)#p(\d+)", n["doc_id"])
                assert m and m[1] == doc_id, n["doc_id"]
                (pool,) = [c for c in want[r["query_id"]]["candidates"] if c["source"] == "same_doc"]
                assert n["text"] == pool["texts"][pool["doc_ids"].index(n["doc_id"])]
                assert n["text"] != r["positive"]["text"]
            else:
                assert n["doc_id"] in docs and n["text"] == docs[n["doc_id"]]["text"]
            if n["source"] == "bm25":
                assert 1 <= n["rank"] <= 50 and n["score"] > 0
        if r["positive"]["source"] != pt.SPAN:
            assert per_source["same_doc"] == 0


@pytest.mark.slow
def test_counts_reconcile_with_rows(mined):
    _, stats, rows = mined
    positives = collections.Counter(r["positive"]["source"] for r in rows)
    negatives = collections.Counter(n["source"] for r in rows for n in r["negatives"])
    assert stats["rows"] == len(rows) == sum(stats["positives_per_source"].values())
    assert stats["positives_per_source"] == dict(positives)
    assert stats["negatives_per_source"] == dict(negatives)
    assert set(negatives) == set(ASKED)
    assert stats["rows_with_fewer_negatives_than_asked"] == sum(1 for r in rows if len(r["negatives"]) < sum(ASKED.values()))
    per_gen = stats["pretext"]
    assert per_gen["ict"]["docs"] == per_gen["crop"]["docs"] == per_gen["span"]["docs"] == N_DOCS
    assert per_gen["ict"]["pairs"] == N_DOCS  # every SciFact abstract has two sentences
    assert 0.4 * N_DOCS < per_gen["crop"]["pairs"] < 0.6 * N_DOCS  # rate 0.5
    span = per_gen["span"]
    assert span["pairs"] + sum(span["skipped"].values()) == N_DOCS
    assert {"one_passage", "no_recurring_span"} <= set(span["skipped"])
    assert stats["counters"]["read"]["corpus_ok"] == N_DOCS and stats["dead_letters"] == {}


@pytest.mark.slow
def test_deterministic_across_runner_modes(mined, corpus, tmp_path):
    base, _, rows = mined
    again = tmp_path / "again"
    pretext.run(args(corpus[0], again, base / "work", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"))
    assert canonical(read_rows(again)) == canonical(rows)


@pytest.mark.slow
def test_augmentation_changes_queries_not_negatives(mined, corpus, tmp_path):
    """Negatives are retrieved and drawn for the original pair, so augmenting the query leaves them as they were."""
    base, _, rows = mined
    out = tmp_path / "augmented"
    stats = pretext.run(args(corpus[0], out, base / "work", "--augment", "query", "--augment_deletion_prob", "0.2",
                             "--augment_vocabulary_size", "500"))
    augmented = {r["query_id"]: r for r in read_rows(out)}
    assert augmented.keys() == {r["query_id"] for r in rows}
    changed = 0
    for r in rows:
        a = augmented[r["query_id"]]
        assert a["positive"] == r["positive"] and a["negatives"] == r["negatives"]
        changed += a["query"] != r["query"]
    assert changed > 0.9 * len(rows)
    assert {g: s["augmented"] for g, s in stats["pretext"].items()} == stats["positives_per_source"]


@pytest.mark.slow
def test_ntuple_layout(mined, corpus, tmp_path):
    """The flat layouts are the mining pipeline's; same_doc counts toward N only where a span pair has it."""
    base, _, rows = mined
    out = tmp_path / "ntuple"
    stats = pretext.run(args(corpus[0], out, base / "work", "--output_format", "n-tuple", "--ntuple_negatives", "4"))
    table = pq.read_table(sorted(out.glob("triples-*.parquet")))
    assert table.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
    dropped = stats["counters"]["rows"].get("n-tuple_rows_dropped_too_few_negatives", 0)
    assert table.num_rows == stats["rows"] - dropped == sum(1 for r in rows if len(r["negatives"]) >= 4)
    assert sorted(table.column("anchor").to_pylist()) == sorted(r["query"] for r in rows if len(r["negatives"]) >= 4)


@pytest.mark.slow
def test_refuses_non_empty_output_without_overwrite(mined, corpus):
    base, _, _ = mined
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pretext.run(args(corpus[0], base / "out", base / "work"))


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (["--negatives", "impression:1"], "unknown source 'impression'"),
    (["--negatives", "random:1@1-10"], "random is unranked"),
    (["--generators", "ict:1", "--negatives", "same_doc:1,random:1"], "same_doc negatives come with span pairs only"),
    (["--generators", "ict:1,cloze:1"], "unknown generator 'cloze'"),
    (["--generators", "crop:1", "--crop_ratio_min", "0.6"], "ratio_min <= ratio_max"),
    (["--augment", "answer"], "sides must be a subset"),
])
def test_configuration_errors_before_any_output(corpus, tmp_path, extra, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=message):
        pretext.run(args(corpus[0], out, tmp_path / "work", "--overwrite", *extra))
    assert (out / "keep.txt").exists()  # a bad configuration never clears the output folder


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretext", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ["--corpus", "--output", "--overwrite", "--work_dir", "--output_format", "--num_shards", "--seed",
                   "--generators", "--ict_query_in_block_prob", "--crop_ratio_min", "--crop_ratio_max", "--span_passage_words",
                   "--span_keep_answer_prob", "--augment", "--augment_masking_prob", "--augment_vocabulary_size",
                   "--negatives", "--bm25_k1", "--bm25_depth"]:
        assert option in text, option
    assert pretext.DEFAULT_MIX in text and pretext.DEFAULT_GENERATORS in text
    assert "pretext" in cli.usage()
