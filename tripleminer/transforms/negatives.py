"""Unranked and log-based candidate negatives: impression, random, gold.

Each transform emits `(query_id, candidates(...))` for its one source. The sampler is the single
place that guarantees a query's positives are never its negatives (random and gold pools already
skip them; impressions drop only clicked documents, so a judged positive shown but never clicked
reaches the sampler and is excluded there).
Each random pool is drawn with the query's own RNG, so it does not depend on bundle order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from tripleminer.schemas.mix import SourceMix
from tripleminer.seeding import stable_rng
from tripleminer.transforms.common import CorpusIds, candidates

if TYPE_CHECKING:
    from tripleminer.transforms.candidates import CandidateInputs


def pool_size(record: Dict[str, Any], per_positive: int) -> int:
    """How many candidates a sampled source offers a query: enough for every positive's row,
    with slack for those another source already took."""
    return 2 * per_positive * len(record["positives"]) + 8


def draw_excluding(rng: np.random.Generator, pool: np.ndarray, exclude: set, n: int) -> List[str]:
    """Up to `n` distinct items of the sorted `pool` not in `exclude`, uniformly at random."""
    available = len(pool) - sum(1 for x in exclude if _contains(pool, x))
    n = min(n, available)
    if n <= 0:
        return []
    if n > len(pool) // 2:  # dense draw: permute once
        return [x for x in (pool[i] for i in rng.permutation(len(pool))) if x not in exclude][:n]
    picked: List[str] = []
    seen = set(exclude)
    while len(picked) < n:  # sparse draw: rejection sampling, O(n) expected
        x = pool[int(rng.integers(len(pool)))]
        if x not in seen:
            seen.add(x)
            picked.append(x)
    return picked


def _contains(sorted_pool: np.ndarray, x: str) -> bool:
    i = int(np.searchsorted(sorted_pool, x))
    return i < len(sorted_pool) and sorted_pool[i] == x


class ImpressionNegatives(beam.PTransform):
    """Documents shown for the query but never clicked in any session (non-click impressions).

    Ranked by their best position on the result page; the score is how often they were shown.
    """

    def __init__(self, corpus_ids: beam.pvalue.AsSingleton) -> None:
        super().__init__()
        self.corpus_ids = corpus_ids

    def expand(self, pair_stats: beam.PCollection) -> beam.PCollection:
        return (
            pair_stats
            | "NeverClicked" >> beam.Filter(lambda kv: kv[1]["clicks"] == 0)
            | "KeyByQuery" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1]["best_rank"], kv[1]["impressions"])))
            | "GroupByQuery" >> beam.GroupByKey()
            | "ToCandidates" >> beam.ParDo(_ImpressionCandidates(), self.corpus_ids)
        )


class _ImpressionCandidates(beam.DoFn):
    def __init__(self) -> None:
        self.ids = CorpusIds()
        self.unknown = Metrics.counter("candidates", "impression_unknown_doc")

    def process(self, element: Tuple[str, Any], corpus_ids: List[str]) -> Iterator[Tuple[str, Dict[str, Any]]]:
        qid, shown = element
        members = self.ids.load(corpus_ids).members
        known = []
        for doc_id, rank, count in sorted(shown, key=lambda t: (t[1], t[0])):
            if doc_id in members:
                known.append((doc_id, rank, count))
            else:
                self.unknown.inc()
        if known:
            doc_ids, ranks, counts = zip(*known)
            yield qid, candidates("impression", doc_ids, ranks=ranks, scores=counts)


class _SampleFromPool(beam.DoFn):
    """A uniform sample from a side-input pool, excluding the query's positives."""

    def __init__(self, source: str, per_positive: int, seed: int) -> None:
        self.source, self.per_positive, self.seed = source, per_positive, seed
        self.pool = CorpusIds()
        self.empty = Metrics.counter("candidates", f"{source}_empty_pool")

    def process(self, record: Dict[str, Any], pool: List[str]) -> Iterator[Tuple[str, Dict[str, Any]]]:
        exclude = {p["doc_id"] for p in record["positives"]}
        rng = stable_rng(self.seed, self.source, record["query_id"])
        drawn = draw_excluding(rng, self.pool.load(pool).sorted, exclude, pool_size(record, self.per_positive))
        if not drawn:
            self.empty.inc()
            return
        yield record["query_id"], candidates(self.source, drawn)


class RandomNegatives(beam.PTransform):
    """Uniform documents from the whole corpus (easy negatives)."""

    def __init__(self, corpus_ids: beam.pvalue.AsSingleton, per_positive: int, seed: int) -> None:
        super().__init__()
        self.corpus_ids, self.per_positive, self.seed = corpus_ids, per_positive, seed

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "DrawRandom" >> beam.ParDo(_SampleFromPool("random", self.per_positive, self.seed), self.corpus_ids)


class GoldNegatives(beam.PTransform):
    """Positives of other queries (Karpukhin et al.'s "gold" negatives): in-domain but off-topic."""

    def __init__(self, per_positive: int, seed: int) -> None:
        super().__init__()
        self.per_positive, self.seed = per_positive, seed

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        gold_pool = beam.pvalue.AsSingleton(
            records
            | "PositiveIds" >> beam.FlatMap(lambda r: [p["doc_id"] for p in r["positives"]])
            | "Distinct" >> beam.Distinct()
            | "ToList" >> beam.combiners.ToList()
        )
        return records | "DrawGold" >> beam.ParDo(_SampleFromPool("gold", self.per_positive, self.seed), gold_pool)


# Candidate builders of the source table (`schemas.mix.SOURCES`, `transforms.candidates`).


def impression_candidates(inputs: CandidateInputs, m: SourceMix) -> beam.PCollection:
    return inputs.log_pairs | "ImpressionNegatives" >> ImpressionNegatives(inputs.corpus_ids)


def gold_candidates(inputs: CandidateInputs, m: SourceMix) -> beam.PCollection:
    return inputs.records | "GoldNegatives" >> GoldNegatives(m.count, inputs.settings.seed)


def random_candidates(inputs: CandidateInputs, m: SourceMix) -> beam.PCollection:
    return inputs.records | "RandomNegatives" >> RandomNegatives(inputs.corpus_ids, m.count, inputs.settings.seed)
