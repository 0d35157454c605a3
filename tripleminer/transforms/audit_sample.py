"""The audit sample (`--audit_sample N`): a stratified random sample of the WRITTEN negatives, for a
human (or a stand-in judge) to label, so the share of false negatives left in the triples can be
estimated with an interval (`tripleminer audit`, `tripleminer/audit.py`).

Strata are source x rank bucket (`RANK_BUCKETS`; unranked sources have one bucket). Each stratum
gets a uniform sample of N of its negatives (all of them where it has fewer): the N smallest
priorities of a stable hash of (seed, negative id), so the sample is deterministic given the seed
and does not depend on order or parallelism. A negative's id (`audit_id`) hashes (query id,
positive id, negative doc id, source): the same written negative has the same id in every run.

Writes `OUTPUT/audit-*.jsonl` (one sampled negative a line, `label` null: 1 = actually relevant,
0 = a true negative) and `OUTPUT/audit_strata-*.jsonl` (each stratum's population, i.e. written
negatives, and sample size), and counts the populations under `audit/`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from tripleminer.io.writers import WriteDeadLetters
from tripleminer.schemas.mix import DENSE_SOURCES
from tripleminer.schemas.outputs import passage_text
from tripleminer.seeding import stable_seed

SAMPLE_PREFIX = "audit"
STRATA_PREFIX = "audit_strata"
NAMESPACE = "audit"
# 1-based rank windows of the ranked sources; the last is open-ended.
RANK_BUCKETS: Tuple[Tuple[int, Optional[int]], ...] = ((1, 10), (11, 30), (31, 100), (101, 300), (301, 1000), (1001, None))
UNRANKED = "unranked"


@dataclass(frozen=True)
class AuditSettings:
    per_stratum: int  # N: sampled negatives per stratum
    seed: int
    output_format: str = "nested"
    ntuple_negatives: Optional[int] = None


def rank_bucket(rank: Optional[int]) -> str:
    if rank is None:
        return UNRANKED
    for start, end in RANK_BUCKETS:
        if end is None or rank <= end:
            return f"{start}-{end}" if end is not None else f"{start}+"
    raise AssertionError("unreachable")


def stratum(source: str, rank: Optional[int]) -> str:
    return f"{source}/{rank_bucket(rank)}"


def audit_id(query_id: str, positive_id: str, doc_id: str, source: str) -> str:
    return hashlib.blake2b("\x1f".join((query_id, positive_id, doc_id, source)).encode("utf-8"), digest_size=8).hexdigest()


def written_negatives(row: Dict[str, Any], output_format: str, ntuple: Optional[int]) -> List[Dict[str, Any]]:
    """The row's negatives as the writer writes them: n-tuple keeps the first N, of rows with at least N."""
    negatives = row["negatives"]
    if output_format == "n-tuple":
        return list(negatives[:ntuple]) if ntuple and len(negatives) >= ntuple else []
    return list(negatives)


def audit_items(row: Dict[str, Any], settings: AuditSettings) -> Iterator[Tuple[str, Tuple[int, str, Dict[str, Any]]]]:
    """(stratum, (priority, audit id, item)) for every written negative of a row."""
    pos = row["positive"]
    for n in written_negatives(row, settings.output_format, settings.ntuple_negatives):
        aid = audit_id(row["query_id"], pos["doc_id"], n["doc_id"], n["source"])
        key = stratum(n["source"], n.get("rank"))
        item = {
            "audit_id": aid, "stratum": key, "source": n["source"], "rank": n.get("rank"), "rank_bucket": rank_bucket(n.get("rank")),
            "query_id": row["query_id"], "query": row["query"], "doc_id": n["doc_id"], "passage": passage_text(n),
            "positive_id": pos["doc_id"], "positive": passage_text(pos),
            "score": n.get("score"), "bi_encoder_score": n.get("score") if n["source"] in DENSE_SOURCES else None,
            "positive_bi_encoder_score": pos.get("score"), "ce_score": n.get("ce_score"), "label": None,
        }
        yield key, (stable_seed(settings.seed, "audit", aid), aid, item)


def _emit(element: Tuple[str, Dict[str, List[Any]]]) -> Iterator[Any]:
    key, joined = element
    population = sum(joined["count"])
    sample = sorted(joined["sample"][0], key=lambda t: t[:2]) if joined["sample"] else []
    Metrics.counter(NAMESPACE, f"population_{key}").inc(population)
    Metrics.counter(NAMESPACE, "sampled").inc(len(sample))
    source, bucket = key.split("/", 1)
    yield beam.pvalue.TaggedOutput("strata", {"stratum": key, "source": source, "rank_bucket": bucket,
                                              "population": population, "sampled": len(sample)})
    for _, _, item in sample:
        yield item


class WriteAuditSample(beam.PTransform):
    """Rows about to be written -> `audit-*.jsonl` and `audit_strata-*.jsonl` in `output_dir`."""

    def __init__(self, settings: AuditSettings, output_dir: str) -> None:
        super().__init__()
        if settings.per_stratum < 1:
            raise ValueError("--audit_sample must be >= 1")
        self.settings, self.output_dir = settings, output_dir

    def expand(self, rows: beam.PCollection):
        s = self.settings
        items = rows | "AuditItems" >> beam.FlatMap(audit_items, s)
        counts = items | "Population" >> beam.combiners.Count.PerKey()
        # the N smallest (priority, id) per stratum; ids are unique, so items themselves are never compared
        sample = items | "SamplePerStratum" >> beam.combiners.Top.PerKey(s.per_stratum, key=lambda t: (-t[0], t[1]))
        out = (
            {"count": counts, "sample": sample}
            | "JoinStrata" >> beam.CoGroupByKey()
            | "Emit" >> beam.FlatMap(_emit).with_outputs("strata", main="items")
        )
        out.items | "WriteAuditSample" >> WriteDeadLetters(self.output_dir, SAMPLE_PREFIX)
        out.strata | "WriteAuditStrata" >> WriteDeadLetters(self.output_dir, STRATA_PREFIX)
        return out.items
