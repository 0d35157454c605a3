"""Unranked and log-based negatives (transforms/negatives.py) on hand-built records: impression
negatives are exactly the never-clicked known documents in best-rank order; random and gold draws
never hold a positive of the query, are the query's own seeded draw whatever the record order, and
an empty pool is counted instead of emitted."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from beam_helpers import query_record, run, singleton
from tripleminer.seeding import stable_rng
from tripleminer.transforms.common import candidates
from tripleminer.transforms.negatives import (
    GoldNegatives,
    ImpressionNegatives,
    RandomNegatives,
    draw_excluding,
    pool_size,
)

SEED = 11
CORPUS = [f"d{i:02d}" for i in range(30)]


def expected_draw(source: str, seed: int, record: Dict[str, Any], pool: Sequence[str], per_positive: int) -> List[str]:
    """The query's own draw: its RNG depends on (seed, source, query id) only, never on bundle order."""
    exclude = {p["doc_id"] for p in record["positives"]}
    rng = stable_rng(seed, source, record["query_id"])
    return draw_excluding(rng, np.array(sorted(pool), dtype=object), exclude, pool_size(record, per_positive))


def expected_lists(source: str, seed: int, records: List[Dict[str, Any]], pool: Sequence[str], per_positive: int):
    out = []
    for r in records:
        drawn = expected_draw(source, seed, r, pool, per_positive)
        if drawn:
            out.append((r["query_id"], candidates(source, drawn)))
    return out


def check_draws(records: List[Dict[str, Any]], pool: Sequence[str], per_positive: int):
    """Matcher: every list is unranked, distinct, inside the pool, free of the query's positives and
    as long as `pool_size` asks (or the whole available pool)."""
    by_id = {r["query_id"]: r for r in records}

    def _check(found: List[Tuple[str, Dict[str, Any]]]) -> None:
        for qid, cand in found:
            positives = {p["doc_id"] for p in by_id[qid]["positives"]}
            ids = cand["doc_ids"]
            assert cand["ranks"] is None and cand["scores"] is None, cand
            assert len(ids) == len(set(ids)) and set(ids) <= set(pool), (qid, ids)
            assert not set(ids) & positives, (qid, ids)
            assert len(ids) == min(pool_size(by_id[qid], per_positive), len(set(pool) - positives)), (qid, ids)

    return _check


# ------------------------------------------------------------------ pure helpers


def test_pool_size_leaves_room_for_every_positive():
    record = query_record("q", ["a", "b", "c"])
    assert pool_size(record, 2) == 2 * 2 * 3 + 8


def test_draw_excluding_never_returns_an_excluded_or_repeated_item():
    pool = np.array(CORPUS, dtype=object)
    exclude = {"d03", "d17"}
    for n in (1, 5, 14, 20, 40):  # sparse (rejection) and dense (permutation) draws
        drawn = draw_excluding(np.random.default_rng(n), pool, exclude, n)
        assert len(drawn) == min(n, 28) and len(set(drawn)) == len(drawn) and not set(drawn) & exclude
    assert sorted(draw_excluding(np.random.default_rng(0), pool, exclude, 99)) == sorted(set(CORPUS) - exclude)
    # ids excluded but absent from the pool do not shrink what is available
    assert sorted(draw_excluding(np.random.default_rng(0), np.array(["a", "b"], dtype=object), {"zz"}, 2)) == ["a", "b"]
    assert draw_excluding(np.random.default_rng(0), np.array(["a"], dtype=object), {"a"}, 3) == []


# ------------------------------------------------------------------ impression


def test_impression_negatives_are_never_clicked_known_documents_by_best_rank():
    def stats(clicks: int, impressions: int, best_rank: int) -> Dict[str, int]:
        return {"clicks": clicks, "impressions": impressions, "best_rank": best_rank}

    pair_stats = [
        (("q1", "d01"), stats(1, 3, 2)),  # clicked once: a positive, never an impression negative
        (("q1", "d04"), stats(0, 5, 3)),  # ties with d02 on rank 3: doc id breaks the tie
        (("q1", "d02"), stats(0, 2, 3)),
        (("q1", "d03"), stats(0, 1, 1)),
        (("q1", "ghost"), stats(0, 4, 2)),  # shown but not in the corpus: counted, dropped
        (("q2", "d05"), stats(2, 2, 1)),  # every shown document clicked: no list
        (("q3", "ghost"), stats(0, 1, 1)),  # only unknown documents: no list
    ]

    def build(p: beam.Pipeline) -> None:
        out = p | beam.Create(pair_stats) | ImpressionNegatives(singleton(p, "CorpusIds", CORPUS))
        assert_that(out, equal_to([("q1", candidates("impression", ["d03", "d02", "d04"], ranks=[1, 3, 3], scores=[1, 2, 5]))]))

    assert run(build)["candidates"]["impression_unknown_doc"] == 2


# ------------------------------------------------------------------ random


def test_random_negatives_exclude_positives_and_are_the_querys_seeded_draw():
    records = [query_record("qa", ["d01"]), query_record("qb", ["d02", "d03"]), query_record("qc", ["d29"])]
    want = expected_lists("random", SEED, records, CORPUS, 1)
    other_seed = expected_lists("random", SEED + 1, records, CORPUS, 1)
    assert want != other_seed  # the seed matters

    def build(p: beam.Pipeline) -> None:
        ids = singleton(p, "CorpusIds", CORPUS)
        for label, recs, seed, expected in (("InOrder", records, SEED, want), ("Reversed", records[::-1], SEED, want),
                                            ("OtherSeed", records, SEED + 1, other_seed)):
            out = p | f"Create{label}" >> beam.Create(recs) | f"Random{label}" >> RandomNegatives(ids, 1, seed)
            assert_that(out, equal_to(expected), label=f"Equal{label}")
            assert_that(out, check_draws(records, CORPUS, 1), label=f"Valid{label}")

    assert "random_empty_pool" not in run(build).get("candidates", {})


def test_random_negatives_on_a_small_corpus_take_every_other_document_and_count_an_empty_pool():
    corpus = ["a", "b", "c", "d", "e", "f"]
    records = [query_record("q1", ["c"]), query_record("all", corpus)]  # "all": every document is a positive

    def build(p: beam.Pipeline) -> None:
        out = p | beam.Create(records) | RandomNegatives(singleton(p, "CorpusIds", corpus), 2, SEED)
        assert_that(out | beam.MapTuple(lambda q, c: (q, sorted(c["doc_ids"]))), equal_to([("q1", ["a", "b", "d", "e", "f"])]))

    assert run(build)["candidates"]["random_empty_pool"] == 1


# ------------------------------------------------------------------ gold


def test_gold_negatives_are_other_queries_positives():
    records = [query_record("qa", ["p1"]), query_record("qb", ["p2", "p3"]), query_record("qc", ["p3"]),
               query_record("qd", ["p1", "p2", "p3"])]  # qd's positives are the whole gold pool: empty
    pool = ["p1", "p2", "p3"]
    want = expected_lists("gold", SEED, records, pool, 1)
    assert {q: sorted(c["doc_ids"]) for q, c in want} == {"qa": ["p2", "p3"], "qb": ["p1"], "qc": ["p1", "p2"]}

    def build(p: beam.Pipeline) -> None:
        for label, recs in (("InOrder", records), ("Reversed", records[::-1])):
            out = p | f"Create{label}" >> beam.Create(recs) | f"Gold{label}" >> GoldNegatives(1, SEED)
            assert_that(out, equal_to(want), label=f"Equal{label}")
            assert_that(out, check_draws(records, pool, 1), label=f"Valid{label}")

    assert run(build)["candidates"]["gold_empty_pool"] == 2  # once per branch: qd in each
