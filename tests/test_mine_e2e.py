"""End to end on the shared SciFact data: the mine pipeline's output has the schema, the positives
the inputs imply, no positive among its negatives, counts that reconcile, and is deterministic
across runner modes."""

import collections

import pyarrow.parquet as pq
import pytest

from conftest import canonical, read_jsonl, read_rows
from tripleminer.io.writers import OutputExistsError
from tripleminer.pipelines import mine
from tripleminer.schemas.outputs import NESTED_SCHEMA, read_run_metadata

pytestmark = pytest.mark.slow  # the whole mine pipeline on SciFact

MIX = "impression:2,bm25:3@5-50,gold:1,random:1"


def args(scifact, out, work, *extra):
    return [
        "--corpus", str(scifact / "corpus.jsonl"),
        "--queries", str(scifact / "queries.jsonl"),
        "--qrels", str(scifact / "qrels" / "train.tsv"),
        "--query_log", str(scifact / "query_log.train.jsonl"),
        "--output", str(out), "--work_dir", str(work), "--negatives", MIX, "--seed", "7", *extra,
    ]


@pytest.fixture(scope="module")
def mined(scifact, tmp_path_factory):
    base = tmp_path_factory.mktemp("mine")
    stats = mine.run(args(scifact, base / "out", base / "work", "--num_shards", "3"))
    return base, stats, read_rows(base / "out")


def expected_positives(scifact):
    """(query, doc) pairs the inputs imply, computed without the pipeline."""
    corpus = {d["_id"] for d in read_jsonl(scifact / "corpus.jsonl")}
    pairs = set()
    for line in (scifact / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if float(s) >= 1:
            pairs.add((q, d))
    sessions = read_jsonl(scifact / "query_log.train.jsonl")
    clicks, shown = collections.Counter(), collections.Counter()
    for s in sessions:  # a click on a document not listed counts as shown
        clicks.update((s["query_id"], d) for d in set(s["clicks"]))
        shown.update((s["query_id"], d) for d in set(s["impressions"]) | set(s["clicks"]))
    # the default --min_click_confidence 0.5: (clicks + 1) / (impressions + 3)
    pairs |= {pair for pair, c in clicks.items() if (c + 1) / (shown[pair] + 3) >= 0.5}
    return {p for p in pairs if p[1] in corpus}, sessions


def test_schema_shards_and_run_metadata(mined):
    base, _, _ = mined
    files = sorted((base / "out").glob("triples-*.parquet"))
    assert [f.name for f in files] == [f"triples-0000{i}-of-00003.parquet" for i in range(3)]
    schema = pq.read_schema(files[0])
    assert schema.remove_metadata().equals(NESTED_SCHEMA)
    meta = read_run_metadata(schema)
    assert meta["seed"] == 7 and meta["negatives"] == MIX


def test_positives_and_negatives_are_right(mined, scifact):
    _, stats, rows = mined
    want, sessions = expected_positives(scifact)
    got = [(r["query_id"], r["positive"]["doc_id"]) for r in rows]
    assert len(got) == len(set(got))
    assert set(got) == want
    positives_of = collections.defaultdict(set)
    for q, d in want:
        positives_of[q].add(d)
    clicked = collections.defaultdict(set)
    shown = collections.defaultdict(set)
    for s in sessions:
        clicked[s["query_id"]] |= set(s["clicks"])
        shown[s["query_id"]] |= set(s["impressions"])
    counts = collections.Counter()
    for r in rows:
        negs = r["negatives"]
        ids = [n["doc_id"] for n in negs]
        assert len(ids) == len(set(ids))
        assert not set(ids) & positives_of[r["query_id"]], r["query_id"]
        assert not set(ids) & clicked[r["query_id"]]  # a click too weak for a row is no negative either
        assert r["positive"]["text"] and all(n["text"] for n in negs)
        for n in negs:
            counts[n["source"]] += 1
            if n["source"] == "bm25":
                assert 5 <= n["rank"] <= 50 and n["score"] > 0
            if n["source"] == "impression":
                assert n["doc_id"] in shown[r["query_id"]] and n["doc_id"] not in clicked[r["query_id"]]
        per_source = collections.Counter(n["source"] for n in negs)
        assert per_source["bm25"] <= 3 and per_source["impression"] <= 2 and per_source["gold"] <= 1 and per_source["random"] <= 1
    # counts reconcile with the stats
    assert stats["rows"] == len(rows)
    weak = {(q, d) for q, docs in clicked.items() for d in docs} - want
    corpus_ids = {d["_id"] for d in read_jsonl(scifact / "corpus.jsonl")}
    assert stats["counters"]["rows"]["click_positives_below_min_click_confidence"] == sum(d in corpus_ids for _, d in weak) > 500
    assert stats["negatives_per_source"] == dict(counts)
    assert counts["bm25"] == 3 * len(rows)  # SciFact always has enough BM25 candidates in ranks 5-50
    short = sum(1 for r in rows if len(r["negatives"]) < 7)
    assert stats["rows_with_fewer_negatives_than_asked"] == short


def test_inputs_are_accounted_for(mined, scifact):
    _, stats, _ = mined
    c = stats["counters"]
    queries = read_jsonl(scifact / "queries.jsonl")
    assert c["read"]["queries_ok"] == len(queries)
    assert stats["queries_with_positive"] + stats["queries_without_positive"] == len(queries)
    assert stats["queries_with_positive"] == 809
    assert c["read"]["corpus_ok"] == 5183 and c["read"]["sessions_ok"] == c["log"]["sessions"] == 2832
    assert stats["dead_letters"] == {}


def test_deterministic_across_runs_and_runner_modes(mined, scifact, tmp_path):
    base, _, rows = mined
    again = tmp_path / "again"
    mine.run(args(scifact, again, base / "work", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
                  "--bm25_shards", "3"))  # and three BM25 shards instead of one: the same rows
    assert canonical(read_rows(again)) == canonical(rows)
    reseeded = tmp_path / "reseeded"
    mine.run(args(scifact, reseeded, base / "work", "--seed", "8"))
    assert canonical(read_rows(reseeded)) != canonical(rows)


def test_refuses_non_empty_output_without_overwrite(mined, scifact):
    base, _, _ = mined
    with pytest.raises(OutputExistsError, match="--overwrite"):
        mine.run(args(scifact, base / "out", base / "work"))


def test_flat_layouts_load_with_datasets(scifact, tmp_path):
    import datasets
    for fmt, columns in [("triplet", ["anchor", "positive", "negative"]),
                         ("n-tuple", ["anchor", "positive"] + [f"negative_{i}" for i in range(1, 8)])]:
        out = tmp_path / fmt
        stats = mine.run(args(scifact, out, tmp_path / "work", "--output_format", fmt))
        ds = datasets.load_dataset("parquet", data_files=str(out / "triples-*.parquet"), split="train")
        assert ds.column_names == columns
        if fmt == "triplet":
            assert ds.num_rows == sum(stats["negatives_per_source"].values())
        else:
            dropped = stats["counters"]["rows"].get("n-tuple_rows_dropped_too_few_negatives", 0)
            assert dropped == stats["rows_with_fewer_negatives_than_asked"]
            assert ds.num_rows == stats["rows"] - dropped
        assert all(isinstance(v, str) and v for v in ds[0].values())
