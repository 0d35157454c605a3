"""The run report reads a real run's output and shows the numbers and plots a user checks first."""

import json
import re

from tripleminer.pipelines import mine
from tripleminer.report import write_report


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
    for png in ("negatives_per_source.png", "ranks.png", "scores.png", "dead_letters.png"):
        assert f"src='{png}'" in page
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = stats["negatives_per_source"]
    assert f"<td>negatives from bm25</td><td>{got['bm25']} written / {2 * stats['rows']} asked</td>" in page
    assert f"<td>rows (query, positive)</td><td>{stats['rows']}</td>" in page
    assert "<td>dead letters: qrels: field &#x27;score&#x27; is not a number</td><td>1</td>" in page
    assert json.loads(re.search(r"<pre>(.*)</pre>", page, re.S).group(1).replace("&quot;", '"'))["seed"] == 13
