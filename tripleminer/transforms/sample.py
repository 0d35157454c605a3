"""Choose each (query, positive)'s negatives from the candidate sources: the configurable mix.

`sample_negatives` is a pure function of (seed, query, positive, candidates, mix), so it is
testable without Beam and gives the same negatives whatever order the candidates arrived in.
The mix says, per source, how many negatives per positive, from which rank window, and whether to
take the top of the window or a uniform sample of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from tripleminer.schemas.mix import DENSE_SOURCES, HARD_SOURCES, SourceMix
from tripleminer.seeding import stable_rng
from tripleminer.transforms.common import Progress, timed



@dataclass(frozen=True)
class RowPick:
    """A query's positives that get a row, and how many others got none for each reason."""

    rows: List[Dict[str, Any]]
    untrusted: int  # click-only, below min_click_confidence
    weak: int  # trusted, but ranked below max_positive_rank
    capped: int  # passed both, over max_positives


@dataclass(frozen=True)
class MixPolicy:
    """Caps and filters across sources (all optional).

    max_hard: at most this many hard negatives per positive (Facebook search: 2 worked best).
    easy_per_hard: easy negatives per hard one chosen, replacing the easy sources' counts
        (Facebook found up to 100:1 kept helping); filled from easy sources in mix order.
    max_score_ratio: NV-Retriever's TopK-PercPos: a candidate whose dense score exceeds this
        fraction of the positive's dense score is a likely false negative and is never used.
    min_margin: likewise for a dense score above the positive's minus this margin.
    max_positives: at most this many rows per query (a seeded choice among its positives that pass
        `min_click_confidence` and `max_positive_rank`, so the cap is spent on labels the bi-encoder
        agrees with); the others stay positives for exclusion, so a capped-away judged document never
        becomes a negative.
    max_positive_rank: a row is written only when fewer than this many of the query's dense
        candidates that are not its positives score above its positive: a judged document the
        bi-encoder ranks far below unjudged ones is often an indirect or wrong label (NFCorpus links
        documents to questions through citations), and a row trains on its positive first.
    min_click_confidence: a positive whose only evidence is clicks (source `click`) gets a row only
        with a `confidence` of at least this; the others stay positives for exclusion (a clicked
        document is never a negative), so the rule costs rows, never false negatives.
    backfill: where the sources fall short of the mix's total (a rank window emptied by a query's
        many positives or by the filters), top the row up from its easy sources, in mix order, so a
        fixed-width layout (n-tuple) keeps the row and every row trains on as many negatives.
    """

    max_hard: Optional[int] = None
    easy_per_hard: Optional[float] = None
    max_score_ratio: Optional[float] = None
    min_margin: Optional[float] = None
    max_positives: Optional[int] = None
    max_positive_rank: Optional[int] = None
    min_click_confidence: Optional[float] = None
    backfill: bool = True

    def wanted(self, mix: Sequence[SourceMix]) -> Optional[int]:
        """Negatives a row should get: the mix's counts, hard ones capped at `max_hard`; None where
        `easy_per_hard` makes it depend on the hard ones found."""
        if self.easy_per_hard is not None:
            return None
        hard = sum(m.count for m in mix if m.source in HARD_SOURCES)
        if self.max_hard is not None:
            hard = min(hard, self.max_hard)
        return hard + sum(m.count for m in mix if m.source not in HARD_SOURCES)

    def trusted(self, positive: Dict[str, Any]) -> bool:
        """False for a click-only positive below `min_click_confidence`: too weak a label for a row."""
        if self.min_click_confidence is None or positive["source"] != "click":
            return True
        return (positive.get("confidence") or 0.0) >= self.min_click_confidence

    def ranked_in(self, rank: Optional[int]) -> bool:
        """False for a positive the dense model ranks below `max_positive_rank` (None: no rank, kept)."""
        return self.max_positive_rank is None or rank is None or rank <= self.max_positive_rank

    def row_positives(self, seed: int, query_id: str, positives: Sequence[Dict[str, Any]],
                      ranks: Optional[Dict[str, Optional[int]]] = None) -> "RowPick":
        """The positives that get a row: the trusted ones whose dense rank (`ranks`, by doc id) passes
        `max_positive_rank`, then all or a seeded choice of `max_positives` of those, in doc-id order;
        with why each other positive got none, so every positive is counted once.
        Filtering before the cap matters where queries have dozens of judged documents (NFCorpus):
        capping first spends most picks on labels the filter then drops."""
        ranks = ranks or {}
        trusted = [p for p in positives if self.trusted(p)]
        eligible = [p for p in trusted if self.ranked_in(ranks.get(p["doc_id"]))]
        rows = list(eligible)
        if self.max_positives is not None and len(eligible) > self.max_positives:
            by_id = {p["doc_id"]: p for p in eligible}
            rows = [by_id[d] for d in pick_positives(seed, query_id, list(by_id), self.max_positives)]
        return RowPick(rows, untrusted=len(positives) - len(trusted), weak=len(trusted) - len(eligible),
                       capped=len(eligible) - len(rows))

    def positive_rank(self, pools: Dict[str, Dict[str, Any]], positives: Sequence[str], positive_score: Optional[float]) -> Optional[int]:
        """1 + the dense candidates, other than the query's positives, scoring above this positive
        (None without a dense score); counts up to the retrieval depth, so the depth bounds it."""
        if positive_score is None:
            return None
        skip = set(positives)
        above = {d for source in DENSE_SOURCES if source in pools and pools[source]["scores"]
                 for d, score in zip(pools[source]["doc_ids"], pools[source]["scores"]) if score > positive_score and d not in skip}
        return 1 + len(above)

    def too_close(self, pools: Dict[str, Dict[str, Any]], positive_score: Optional[float]) -> List[str]:
        """Doc ids of dense candidates the positive-aware filter rejects for this positive."""
        if positive_score is None or (self.max_score_ratio is None and self.min_margin is None):
            return []
        limit = min(
            self.max_score_ratio * positive_score if self.max_score_ratio is not None else float("inf"),
            positive_score - self.min_margin if self.min_margin is not None else float("inf"),
        )
        return [
            d
            for source in DENSE_SOURCES
            if source in pools and pools[source]["scores"]
            for d, score in zip(pools[source]["doc_ids"], pools[source]["scores"])
            if score > limit
        ]


def pick_positives(seed: int, query_id: str, doc_ids: Sequence[str], k: int) -> List[str]:
    """A query's positives that get a row under `--max_positives_per_query k`: all when it has at most
    k, else a seeded choice of k, in doc-id order. Pure, so a benchmark can train other miners' rows on
    the same (query, positive) pairs."""
    ordered = sorted(doc_ids)
    if len(ordered) <= k:
        return ordered
    picked = stable_rng(seed, query_id, "positives").choice(len(ordered), size=k, replace=False)
    return [ordered[i] for i in sorted(picked.tolist())]


def sample_negatives(
    seed: int,
    query_id: str,
    positive_id: str,
    exclude: Iterable[str],
    pools: Dict[str, Dict[str, Any]],
    mix: Sequence[SourceMix],
    policy: MixPolicy = MixPolicy(),
) -> List[Dict[str, Any]]:
    """Negatives for one (query, positive): hard sources first, then easy ones, each in mix order;
    never a doc in `exclude` (the query's positives, filtered likely false negatives) nor one
    already chosen from an earlier source."""
    taken = set(exclude)
    chosen: List[Dict[str, Any]] = []
    hard = [m for m in mix if m.source in HARD_SOURCES]
    easy = [m for m in mix if m.source not in HARD_SOURCES]
    for m in hard:
        budget = m.count if policy.max_hard is None else min(m.count, policy.max_hard - len(chosen))
        chosen += _take(seed, query_id, positive_id, pools.get(m.source), m, budget, taken)
    easy_budget = None if policy.easy_per_hard is None else round(policy.easy_per_hard * len(chosen))
    for m in easy:
        budget = m.count if easy_budget is None else easy_budget
        got = _take(seed, query_id, positive_id, pools.get(m.source), m, budget, taken)
        chosen += got
        if easy_budget is not None:
            easy_budget -= len(got)
    wanted = policy.wanted(mix)
    if policy.backfill and wanted is not None:
        for m in easy:
            chosen += _take(seed, query_id, positive_id, pools.get(m.source), m, wanted - len(chosen), taken, "backfill")
    return chosen


def _take(seed: int, query_id: str, positive_id: str, pool: Optional[Dict[str, Any]], m: SourceMix,
          count: int, taken: set, draw: str = "") -> List[Dict[str, Any]]:
    """Up to `count` candidates of one source's pool inside its window and not yet taken."""
    if pool is None or count <= 0:
        return []
    ranks = pool["ranks"] or [None] * len(pool["doc_ids"])
    eligible = [i for i, (d, r) in enumerate(zip(pool["doc_ids"], ranks)) if d not in taken and m.in_window(r)]
    # Best rank first, then doc id: the draw does not depend on the order candidates arrived in.
    eligible.sort(key=lambda i: (ranks[i] if ranks[i] is not None else 0, pool["doc_ids"][i]))
    if m.strategy == "random" and len(eligible) > count:
        rng = stable_rng(seed, query_id, positive_id, m.source, *([draw] if draw else []))
        picked = set(rng.choice(len(eligible), size=count, replace=False).tolist())
        eligible = [i for j, i in enumerate(eligible) if j in picked]
    out = []
    for i in eligible[:count]:
        taken.add(pool["doc_ids"][i])
        out.append(_negative(pool, i, ranks[i]))
    return out


def _negative(pool: Dict[str, Any], i: int, rank: Optional[int]) -> Dict[str, Any]:
    return {
        "doc_id": pool["doc_ids"][i],
        "title": pool["titles"][i] if pool["titles"] else None,
        "text": pool["texts"][i] if pool["texts"] else None,
        "source": pool["source"],
        "rank": rank,
        "score": pool["scores"][i] if pool["scores"] else None,
        "ce_score": None,
    }


class _Sample(beam.DoFn):
    def __init__(self, seed: int, mix: Sequence[SourceMix], policy: MixPolicy) -> None:
        self.seed, self.mix, self.policy = seed, list(mix), policy
        self.wanted = policy.wanted(mix) or sum(m.count for m in mix)
        self.rows = Metrics.counter("rows", "rows")
        self.short = Metrics.counter("rows", "rows_with_fewer_negatives_than_asked")
        self.hard_wanted = self.wanted - sum(m.count for m in mix if m.source not in HARD_SOURCES)
        self.backfilled = Metrics.counter("rows", "rows_backfilled_with_easy_negatives")
        self.capped = Metrics.counter("rows", "positives_over_max_positives_per_query")
        self.weak_click = Metrics.counter("rows", "click_positives_below_min_click_confidence")
        self.too_close = Metrics.counter("filter", "positive_aware_rejected_candidates")
        self.weak_positive = Metrics.counter("filter", "rows_positive_below_max_positive_rank")
        self.per_source = {m.source: Metrics.counter("negatives", m.source) for m in mix}
        self.progress = Progress("sample", "rows")

    def process(self, element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Dict[str, Any]]:
        _, joined = element
        if not joined["record"]:
            # candidates of a query that has no record (e.g. no positive): nothing to build
            return
        (record,) = joined["record"]
        pools = {c["source"]: c for c in joined["candidates"]}
        pools.update({c["source"]: c for c in record.get("candidates", [])})
        positive_scores = joined.get("positive_scores") or [{}]
        positives = [p["doc_id"] for p in record["positives"]]
        ranks = ({d: self.policy.positive_rank(pools, positives, positive_scores[0].get(d)) for d in positives}
                 if self.policy.max_positive_rank is not None else {})  # only the rank filter reads them
        picked = self.policy.row_positives(self.seed, record["query_id"], record["positives"], ranks)
        self.weak_click.inc(picked.untrusted)
        self.weak_positive.inc(picked.weak)
        self.capped.inc(picked.capped)
        with timed("sample"):
            for pos in picked.rows:
                dense_score = positive_scores[0].get(pos["doc_id"])
                if dense_score is not None:
                    pos = dict(pos, score=dense_score)
                rejected = self.policy.too_close(pools, dense_score)
                self.too_close.inc(len(rejected))
                negatives = sample_negatives(
                    self.seed, record["query_id"], pos["doc_id"], positives + rejected, pools, self.mix, self.policy
                )
                self.rows.inc()
                self.progress.add()
                if len(negatives) < self.wanted:
                    self.short.inc()
                if self.policy.backfill and sum(n["source"] in HARD_SOURCES for n in negatives) < self.hard_wanted:
                    self.backfilled.inc()
                for n in negatives:
                    self.per_source[n["source"]].inc()
                yield {"query_id": record["query_id"], "query": record["query"], "positive": pos, "negatives": negatives}


class SampleNegatives(beam.PTransform):
    """Join query records with every source's candidates (and, for the positive-aware filter, the
    positives' dense scores) and emit one row per (query, positive)."""

    def __init__(self, seed: int, mix: Sequence[SourceMix], policy: MixPolicy = MixPolicy(),
                 positive_scores: Optional[beam.PCollection] = None) -> None:
        super().__init__()
        self.seed, self.mix, self.policy, self.positive_scores = seed, mix, policy, positive_scores

    def expand(self, inputs: Tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        records, candidate_lists = inputs
        keyed = records | "KeyRecords" >> beam.Map(lambda r: (r["query_id"], r))
        joined = {"record": keyed, "candidates": candidate_lists}
        if self.positive_scores is not None:
            joined["positive_scores"] = self.positive_scores
        return (
            joined
            | "GroupByQuery" >> beam.CoGroupByKey()
            | "Sample" >> beam.ParDo(_Sample(self.seed, self.mix, self.policy))
        )
