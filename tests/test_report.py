"""The run report reads a real run's output and shows the numbers and plots a user checks first."""

import html
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tripleminer.pipelines import mine
from tripleminer.report import write_report
from tripleminer.schemas.outputs import TRIPLET_SCHEMA, with_run_metadata

PNG = b"\x89PNG\r\n\x1a\n"


def _images(page):
    return set(re.findall(r"src='([^']+\.png)'", page))


def _cell(page, key):
    m = re.search(rf"<td>{re.escape(html.escape(key))}</td><td>(.*?)</td>", page)
    return m and html.unescape(m.group(1))


@pytest.mark.slow
def test_report_of_a_scifact_run(scifact, tmp_path):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text((scifact / "qrels" / "train.tsv").read_text() + "q-bad\tdoc\tnot-a-number\n")
    out = tmp_path / "run"
    stats = mine.run([
        "--corpus", str(scifact / "corpus.jsonl"), "--queries", str(scifact / "queries.jsonl"), "--qrels", str(qrels),
        "--query_log", str(scifact / "query_log.train.jsonl"), "--negatives", "impression:1,bm25:2@5-30,random:1",
        "--work_dir", str(tmp_path / "work"), "--output", str(out),
    ])
    index = write_report(str(out))
    page = open(index, encoding="utf-8").read()
    for png in ("negatives_per_source.png", "ranks.png", "scores.png", "dead_letters.png", "text_lengths.png"):
        assert f"src='{png}'" in page
        assert (out / "report" / png).read_bytes()[:8] == PNG
    got = stats["negatives_per_source"]
    assert f"<td>negatives from bm25</td><td>{got['bm25']} written / {2 * stats['rows']} asked</td>" in page
    assert f"<td>rows (query, positive)</td><td>{stats['rows']}</td>" in page
    assert "<td>dead letters: qrels: field &#x27;score&#x27; is not a number</td><td>1</td>" in page
    assert json.loads(re.search(r"<pre>(.*)</pre>", page, re.S).group(1).replace("&quot;", '"'))["seed"] == 13
    assert "id='left-out'" not in page  # the nested layout has it all


@pytest.fixture(scope="module")
def small_scifact(scifact, tmp_path_factory):
    """A few hundred SciFact docs: the positives of the first 60 train qrels and 240 others; one bad qrel."""
    base = tmp_path_factory.mktemp("small_scifact")
    header, *lines = (scifact / "qrels" / "train.tsv").read_text().splitlines()
    lines = lines[:60]
    positives = {line.split("\t")[1] for line in lines}
    query_ids = {line.split("\t")[0] for line in lines}
    docs = [json.loads(line) for line in (scifact / "corpus.jsonl").read_text().splitlines() if line.strip()]
    others = [d for d in docs if d["_id"] not in positives][:240]
    keep = [d for d in docs if d["_id"] in positives] + others
    (base / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in keep))
    queries = [line for line in (scifact / "queries.jsonl").read_text().splitlines() if json.loads(line)["_id"] in query_ids]
    (base / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (base / "qrels.tsv").write_text("\n".join([header, *lines, "q-bad\tdoc\tnot-a-number"]) + "\n")
    return base


@pytest.mark.slow
@pytest.mark.parametrize("layout,extra,counted", [
    ("triplet", [], "written"),  # every sampled negative is a triplet: the stats' counts are the written ones
    ("n-tuple", ["--ntuple_negatives", "2"], "sampled"),  # 3 sampled per row, 2 kept: counts as sampled
])
def test_report_of_a_flat_run(small_scifact, tmp_path, layout, extra, counted):
    out = tmp_path / "run"
    stats = mine.run([
        "--corpus", str(small_scifact / "corpus.jsonl"), "--queries", str(small_scifact / "queries.jsonl"),
        "--qrels", str(small_scifact / "qrels.tsv"), "--negatives", "bm25:2@1-20,random:1",
        "--output_format", layout, *extra, "--work_dir", str(tmp_path / "work"), "--output", str(out),
    ])
    page = open(write_report(str(out)), encoding="utf-8").read()
    flat_rows = sum(pq.read_metadata(f).num_rows for f in out.glob("triples-*.parquet"))

    # What stats.json and the texts allow.
    assert {"negatives_per_source.png", "text_lengths.png", "dead_letters.png"} <= _images(page)
    for png in _images(page):
        assert (out / "report" / png).read_bytes()[:8] == PNG
    assert f"id='negatives-per-source-asked-vs-{counted}'" in page
    assert _cell(page, "output layout") == (layout if layout == "triplet" else "n-tuple (N = 2)")
    assert _cell(page, "rows (query, positive)") == str(stats["rows"])
    assert _cell(page, f"{layout} rows in the shards") == str(flat_rows)
    got = stats["negatives_per_source"]
    assert _cell(page, "negatives from bm25") == f"{got['bm25']} {counted} / {2 * stats['rows']} asked"
    assert _cell(page, "negatives from random") == f"{got['random']} {counted} / {stats['rows']} asked"
    assert _cell(page, "negatives in the shards") == str(flat_rows if layout == "triplet" else 2 * flat_rows)
    assert _cell(page, "words per anchor (query)").startswith("median ")
    assert _cell(page, "dead letters: qrels: field 'score' is not a number") == "1"
    assert "No cross-encoder in this run" in page

    # ... and what it leaves out, said on the page.
    assert not {"ranks.png", "scores.png", "ce_scores.png"} & _images(page)
    left_out = re.search(r"<h2 id='left-out'>Left out: needs the nested layout</h2>(.*?)</ul>", page, re.S).group(1)
    assert "Ranks of the sampled negatives per ranked source (in this mix: bm25)" in left_out
    assert "Dense scores of the positives" in left_out and "(needs ann in the mix)" in left_out
    assert "Cross-encoder scores of positives vs negatives (needs --cross_encoder)" in left_out
    assert ("Negatives written per source" in left_out) == (counted == "sampled")
    assert "--output_format nested" in page


def test_report_of_a_flat_run_with_a_cross_encoder(tmp_path):
    """No data needed: a hand-made triplet run whose cross-encoder dropped negatives and left a duplicate."""
    out = tmp_path / "run"
    out.mkdir()
    config = {"output_format": "triplet", "negatives": "ann:1,bm25:1", "cross_encoder": "some/ce", "seed": 3}
    rows = [("q1", "p1", "n1"), ("q1", "p1", "n2"), ("q2", "p2", "p2")]  # q2's second negative was dropped
    table = pa.table({k: [r[i] for r in rows] for i, k in enumerate(("anchor", "positive", "negative"))})
    pq.write_table(table.cast(with_run_metadata(TRIPLET_SCHEMA, config)), out / "triples-00000-of-00001.parquet")
    crossencoder = {"scored_ann": 2, "flagged_ann": 1, "scored_bm25": 2, "flagged_bm25": 0}
    (out / "stats.json").write_text(json.dumps({
        "config": config, "rows": 2, "wall_time_s": 1.0, "negatives_per_source": {"ann": 2, "bm25": 2},
        "rows_with_fewer_negatives_than_asked": 0, "dead_letters": {},
        "false_negative_rate_per_source": {"ann": {"scored": 2, "flagged": 1, "rate": 0.5},
                                           "bm25": {"scored": 2, "flagged": 0, "rate": 0.0}},
        "counters": {"crossencoder": crossencoder},
    }))
    (out / "ce_flagged-00000-of-00001.jsonl").write_text(json.dumps({"source": "ann", "doc_id": "d", "ce_score": 0.9}) + "\n")
    page = open(write_report(str(out)), encoding="utf-8").read()

    assert {"negatives_per_source.png", "false_negative_rate.png", "negatives_per_row.png", "text_lengths.png"} == _images(page)
    assert _cell(page, "negatives from ann") == "2 sampled / 2 asked"
    # The source table's order (impression, bm25, ann, ...), not the mix's or the alphabet's.
    assert page.index("<td>negatives from bm25</td>") < page.index("<td>negatives from ann</td>")
    assert _cell(page, "false-negative rate of ann") == "50.0%"
    assert _cell(page, "hard negatives (bm25, ann)") == "100.0% of sampled"
    assert _cell(page, "(anchor, positive) pairs in the shards") == "2"
    assert _cell(page, "negatives with the same text as their row's positive") == "1"
    assert "No dead letters" in page
    assert "(this run scored them, but the flat rows do not keep scores)" in page
    assert "(in this mix: ann)" in page
    assert "ce_flagged-*.jsonl" in page
