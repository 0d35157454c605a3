"""The sampler is a pure function: windows, counts, exclusions and determinism, without Beam."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripleminer.transforms.common import candidates
from tripleminer.schemas.mix import SourceMix, parse_mix
from tripleminer.transforms.sample import sample_negatives


def bm25_pool(n=50):
    return candidates("bm25", [f"d{i}" for i in range(1, n + 1)], ranks=range(1, n + 1), scores=[100.0 - i for i in range(n)])


def test_parse_mix_reads_counts_windows_and_strategies():
    mix = parse_mix("impression:2, bm25:4@10-100/top,random:1")
    assert mix == [
        SourceMix("impression", 2),
        SourceMix("bm25", 4, 10, 100, "top"),
        SourceMix("random", 1),
    ]


@pytest.mark.parametrize("bad", ["bm25", "bm25:x", "bm25:2@5", "bm25:2@9-3", "bm25:1/best", "a:1,a:2"])
def test_parse_mix_rejects_bad_specs(bad):
    with pytest.raises(ValueError):
        parse_mix(bad)


def test_window_and_top_strategy():
    negs = sample_negatives(1, "q", "d3", ["d3"], {"bm25": bm25_pool()}, [SourceMix("bm25", 3, 2, 10, "top")])
    assert [n["doc_id"] for n in negs] == ["d2", "d4", "d5"]  # d1 outside the window, d3 the positive
    assert [n["rank"] for n in negs] == [2, 4, 5]
    assert all(n["source"] == "bm25" for n in negs)


def test_sources_never_repeat_a_document_and_fill_in_mix_order():
    pools = {
        "impression": candidates("impression", ["d1", "d2"], ranks=[1, 2]),
        "bm25": bm25_pool(3),
        "random": candidates("random", ["d2", "d9"]),
    }
    mix = [SourceMix("impression", 2), SourceMix("bm25", 3), SourceMix("random", 2)]
    negs = sample_negatives(5, "q", "p", ["p"], pools, mix)
    ids = [n["doc_id"] for n in negs]
    assert ids == ["d1", "d2", "d3", "d9"]
    assert [n["source"] for n in negs] == ["impression", "impression", "bm25", "random"]


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    positives=st.sets(st.integers(1, 60), max_size=5),
    count=st.integers(0, 10),
    start=st.integers(1, 30),
    width=st.integers(0, 40),
    data=st.data(),
)
def test_properties_hold_under_any_input_order(seed, n, positives, count, start, width, data):
    pool = bm25_pool(n)
    order = data.draw(st.permutations(range(n)))
    shuffled = {k: [pool[k][i] for i in order] if isinstance(pool[k], list) else pool[k] for k in pool}
    pos = [f"d{i}" for i in sorted(positives)]
    mix = [SourceMix("bm25", count, start, start + width)]
    a = sample_negatives(seed, "q", "p", pos, {"bm25": pool}, mix)
    b = sample_negatives(seed, "q", "p", pos, {"bm25": shuffled}, mix)
    assert a == b  # determinism regardless of candidate order
    ids = [x["doc_id"] for x in a]
    assert len(ids) == len(set(ids))  # no duplicates
    assert not set(ids) & set(pos)  # never a positive
    assert all(start <= x["rank"] <= start + width for x in a)  # window respected
    eligible = [i for i in range(start, min(n, start + width) + 1) if f"d{i}" not in pos]
    assert len(ids) == min(count, len(eligible))  # as many as asked, or all there are


def test_random_strategy_is_seeded_and_covers_the_window():
    mix = [SourceMix("bm25", 2, 1, 50)]
    draws = {tuple(n["doc_id"] for n in sample_negatives(s, "q", "p", [], {"bm25": bm25_pool()}, mix)) for s in range(200)}
    assert len(draws) > 100  # different seeds give different samples
    seen = {d for pair in draws for d in pair}
    assert len(seen) == 50  # every rank of the window gets drawn
    same = sample_negatives(7, "q", "p", [], {"bm25": bm25_pool()}, mix)
    assert same == sample_negatives(7, "q", "p", [], {"bm25": bm25_pool()}, mix)
    assert same != sample_negatives(7, "q", "other-positive", [], {"bm25": bm25_pool()}, mix)


def test_hard_cap_and_easy_to_hard_ratio():
    from tripleminer.transforms.sample import MixPolicy

    pools = {
        "bm25": bm25_pool(20),
        "ann": candidates("ann", [f"a{i}" for i in range(20)], ranks=range(1, 21), scores=[0.9] * 20),
        "random": candidates("random", [f"r{i}" for i in range(50)]),
        "gold": candidates("gold", [f"g{i}" for i in range(50)]),
    }
    mix = parse_mix("random:1,bm25:3,ann:3,gold:1")
    negs = sample_negatives(3, "q", "p", [], pools, mix, MixPolicy(max_hard=2, easy_per_hard=10))
    sources = [n["source"] for n in negs]
    assert sources[:2] == ["bm25", "bm25"]  # cap reached inside the first hard source
    assert sources.count("ann") == 0
    assert sources[2:] == ["random"] * 20  # 10 easy per hard, filled in mix order: random has 50
    uncapped = sample_negatives(3, "q", "p", [], pools, mix)
    assert [n["source"] for n in uncapped] == ["bm25"] * 3 + ["ann"] * 3 + ["random", "gold"]


def test_positive_aware_filter_rejects_dense_candidates_close_to_the_positive():
    from tripleminer.transforms.sample import MixPolicy

    pools = {"ann": candidates("ann", ["a", "b", "c", "d"], ranks=[1, 2, 3, 4], scores=[0.80, 0.76, 0.70, 0.50]),
             "bm25": candidates("bm25", ["a", "z"], ranks=[1, 2], scores=[9.0, 8.0])}
    policy = MixPolicy(max_score_ratio=0.95)
    rejected = policy.too_close(pools, positive_score=0.8)  # limit 0.76: only "a" is above
    assert rejected == ["a"]
    assert MixPolicy(min_margin=0.05).too_close(pools, 0.8) == ["a", "b"]  # above 0.75
    assert MixPolicy().too_close(pools, 0.8) == [] and policy.too_close(pools, None) == []
    negs = sample_negatives(1, "q", "p", ["p"] + rejected, pools, parse_mix("bm25:2,ann:4"), policy)
    assert [n["doc_id"] for n in negs] == ["z", "b", "c", "d"]  # "a" is excluded from every source


def test_max_positives_caps_rows_per_query_but_every_positive_stays_excluded():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from tripleminer.transforms.sample import MixPolicy, SampleNegatives

    positives = [{"doc_id": f"d{i}", "source": "qrel"} for i in (1, 3, 5, 7, 9)]
    policy = MixPolicy(max_positives=2)
    chosen = [p["doc_id"] for p in policy.row_positives(13, "q", positives).rows]
    assert len(chosen) == 2 and chosen == [p["doc_id"] for p in policy.row_positives(13, "q", list(reversed(positives))).rows]
    assert {tuple(p["doc_id"] for p in policy.row_positives(s, "q", positives).rows) for s in range(20)} != {tuple(chosen)}  # the seed decides
    assert MixPolicy().row_positives(13, "q", positives).rows == positives

    def check(rows):
        assert sorted(r["positive"]["doc_id"] for r in rows) == sorted(chosen)
        for r in rows:
            negatives = [n["doc_id"] for n in r["negatives"]]
            assert len(negatives) == 10 and not set(negatives) & {p["doc_id"] for p in positives}

    with TestPipeline() as p:
        records = p | "Records" >> beam.Create([{"query_id": "q", "query": "text", "positives": positives}])
        pools = p | "Pools" >> beam.Create([("q", bm25_pool(20))])
        rows = (records, pools) | SampleNegatives(13, [SourceMix("bm25", 10, 1, 20, "top")], policy)
        assert_that(rows | beam.combiners.ToList(), lambda got: check(got[0]))


def test_backfill_tops_up_a_short_row_from_the_easy_sources():
    """A window emptied by the query's positives: the shortfall comes from random (then gold), never a
    positive or a repeat, and --no_backfill keeps the row short."""
    from tripleminer.transforms.sample import MixPolicy

    positives = [f"d{i}" for i in range(1, 9)]  # 8 of the 10 bm25 candidates are judged
    pools = {"bm25": bm25_pool(10), "random": candidates("random", [f"r{i}" for i in range(6)] + ["d1"]),
             "gold": candidates("gold", ["g1", "g2"])}
    mix = parse_mix("bm25:4,random:1,gold:1")
    negs = sample_negatives(7, "q", "d1", positives, pools, mix)
    ids = [n["doc_id"] for n in negs]
    assert len(negs) == 6 and len(set(ids)) == 6 and not set(ids) & set(positives)
    assert [n["source"] for n in negs] == ["bm25", "bm25", "random", "gold", "random", "random"]
    assert sample_negatives(7, "q", "d1", positives, pools, mix) == negs  # seeded
    short = sample_negatives(7, "q", "d1", positives, pools, mix, MixPolicy(backfill=False))
    assert [n["source"] for n in short] == ["bm25", "bm25", "random", "gold"]
    assert MixPolicy(max_hard=2).wanted(mix) == 4 and MixPolicy(easy_per_hard=3).wanted(mix) is None


def test_positive_rank_counts_unjudged_dense_candidates_above_the_positive():
    """Other positives of the query never count against a positive; without a dense score, no rank."""
    from tripleminer.transforms.sample import MixPolicy

    pools = {"ann": candidates("ann", ["p2", "a", "b", "c"], ranks=[1, 2, 3, 4], scores=[0.9, 0.8, 0.7, 0.3]),
             "bm25": candidates("bm25", ["z"], ranks=[1], scores=[50.0])}  # not dense: never counted
    policy = MixPolicy(max_positive_rank=2)
    assert policy.positive_rank(pools, ["p1", "p2"], 0.75) == 2  # only "a" is above, p2 is a positive
    assert policy.positive_rank(pools, ["p1", "p2"], 0.5) == 3
    assert policy.positive_rank(pools, ["p1"], 0.95) == 1
    assert policy.positive_rank(pools, ["p1"], None) is None


def test_max_positives_picks_among_positives_that_pass_max_positive_rank():
    """Filter, then cap: a query with many judged documents spends its rows on the ones the
    bi-encoder ranks high, and every positive is a row or counted once (weak or capped)."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    from tests.beam_helpers import query_record, run
    from tripleminer.transforms.sample import MixPolicy, SampleNegatives

    # dense candidates a1..a20 score 0.80 down to 0.61; positives p0..p9 sit at ranks 1, 3, 5, ... 19 among them
    pool = candidates("ann", [f"a{i}" for i in range(1, 21)], ranks=range(1, 21), scores=[0.8 - 0.01 * i for i in range(20)])
    scores = {f"p{k}": 0.805 - 0.02 * k for k in range(10)}
    ids = sorted(scores)
    policy = MixPolicy(max_positives=2, max_positive_rank=6)
    ranks = {d: policy.positive_rank({"ann": pool}, ids, s) for d, s in scores.items()}
    assert [ranks[d] for d in ids] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    confident = {"p0", "p1", "p2"}
    for seed in range(10):  # whatever the seed, the two rows come from the three confident positives
        picked = {p["doc_id"] for p in policy.row_positives(seed, "q", [{"doc_id": d} for d in ids], ranks).rows}
        assert len(picked) == 2 and picked <= confident
    assert [p["doc_id"] for p in MixPolicy(max_positive_rank=6).row_positives(1, "q", [{"doc_id": d} for d in ids], ranks).rows] == ["p0", "p1", "p2"]

    def build(p):
        records = p | "Records" >> beam.Create([query_record("q", ids)])
        pools = p | "Pools" >> beam.Create([("q", pool)])
        positive_scores = p | "Scores" >> beam.Create([("q", scores)])
        rows = (records, pools) | SampleNegatives(13, [SourceMix("ann", 2, 1, 20, "top")], policy, positive_scores)
        assert_that(rows | beam.Map(lambda r: r["positive"]["doc_id"]) | beam.combiners.ToList(),
                    lambda got: (len(got[0]) == 2 and set(got[0]) <= confident) or pytest.fail(f"rows for {got}"))

    counted = run(build)
    assert counted["filter"]["rows_positive_below_max_positive_rank"] == 7
    assert counted["rows"]["positives_over_max_positives_per_query"] == 1
    assert counted["rows"]["rows"] == 2


def test_min_click_confidence_drops_rows_of_weak_clicks_only():
    """A click-only positive below the threshold gets no row; judged, merged and confident click
    positives keep theirs, and the cap then chooses among the trusted ones."""
    from tripleminer.transforms.positives import positive
    from tripleminer.transforms.sample import MixPolicy

    weak = positive("w", "click", confidence=0.25)
    sure = positive("s", "click", confidence=0.5)
    judged = positive("j", "qrel")
    merged = positive("m", "qrel+click", confidence=None)
    other = positive("f", "failed_search", confidence=0.1)  # not a click: the rule leaves it
    found = [weak, sure, judged, merged, other]
    policy = MixPolicy(min_click_confidence=0.5)
    assert [p["doc_id"] for p in policy.row_positives(1, "q", found).rows] == ["s", "j", "m", "f"]
    assert [p["doc_id"] for p in MixPolicy().row_positives(1, "q", found).rows] == ["w", "s", "j", "m", "f"]
    capped = MixPolicy(min_click_confidence=0.5, max_positives=2).row_positives(1, "q", found)
    assert len(capped.rows) == 2 and "w" not in {p["doc_id"] for p in capped.rows}
    assert (capped.untrusted, capped.weak, capped.capped) == (1, 0, 2)  # every positive counted once
