"""What every triples pipeline shares: reading the corpus, and the tail from query records to files.

    records -> [leakage: eval queries] -> candidates (source table)
            -> filter ([near copies of positives], [eval-judged documents], positive-aware) -> sample
            -> texts -> denoise -> [leakage: eval-judged positives] -> [audit sample] -> [query clusters] -> write

The bracketed steps run only when asked for (`GuardSettings`, `OutputSettings.query_clusters`), so
without them the rows are those of a run before they existed.

`mine` (labelled queries) and `pretext` (self-supervised pairs) differ only in how they make query
records; from the records on they apply `RecordsToTriples`, with the same step labels, so a stage
has one name in both pipelines' metrics and monitoring.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from tripleminer.io.readers import ReadRecords
from tripleminer.io.writers import CE_REPORT_PREFIX, WriteDeadLetters, WriteTriples
from tripleminer.pipelines.settings import CorpusSettings, TriplesSettings
from tripleminer.transforms.candidates import CandidateInputs, candidate_lists
from tripleminer.transforms.crossencoder import CrossEncoderDenoise
from tripleminer.transforms.audit_sample import AuditSettings, WriteAuditSample
from tripleminer.transforms.dedupe import DedupeById
from tripleminer.transforms.leakage import REPORT_PREFIX as LEAKAGE_PREFIX
from tripleminer.transforms.leakage import LeakageGuard
from tripleminer.transforms.near_duplicates import DropNearDuplicateCandidates
from tripleminer.transforms.query_clusters import AttachClusters, ClusterQueries, query_vectors
from tripleminer.transforms.retrieval import PositiveScores
from tripleminer.transforms.sample import SampleNegatives
from tripleminer.transforms.texts import AttachTexts


class Corpus(NamedTuple):
    docs: beam.PCollection  # validated, deduplicated {doc_id, title, text}
    ids: beam.pvalue.AsSingleton  # every doc id, as one list (for sampling and membership)
    dead: List[beam.PCollection]  # dead letters of reading and deduplication


def read_corpus(p: beam.Pipeline, settings: CorpusSettings) -> Corpus:
    """Read, validate and deduplicate the corpus; documents over `max_doc_chars` are dead letters."""
    corpus = p | ReadRecords("corpus", settings.pattern, "corpus", settings.max_doc_chars)
    unique = corpus["records"] | DedupeById("corpus", "doc_id")
    docs = unique["records"]
    ids = beam.pvalue.AsSingleton(
        docs | "DocIds" >> beam.Map(lambda d: d["doc_id"]) | "AllDocIds" >> beam.combiners.ToList()
    )
    return Corpus(docs, ids, [corpus["dead"], unique["dead"]])


class RecordsToTriples(beam.PTransform):
    """Query records -> triples on disk: the shared tail of every pipeline.

    `log_pairs` feeds log-based sources (impressions); `dead` are the dead letters of the stages
    before, written beside the triples; `rewrite` (e.g. pretext augmentation) changes the records
    after their candidates were retrieved with the original queries and before sampling.
    """

    def __init__(self, settings: TriplesSettings, corpus: Corpus, dead: Sequence[beam.PCollection] = (),
                 log_pairs: Optional[beam.PCollection] = None, rewrite: Optional[beam.PTransform] = None) -> None:
        super().__init__()
        self.settings, self.corpus, self.dead, self.log_pairs, self.rewrite = settings, corpus, list(dead), log_pairs, rewrite

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        s, g = self.settings, self.settings.guard
        guard = LeakageGuard(records.pipeline, g.leakage) if g.leakage is not None else None
        if guard is not None:
            records = guard.queries(records)
        inputs = CandidateInputs(s.candidates, self.corpus.docs, self.corpus.ids, records, self.log_pairs)
        lists = candidate_lists(inputs, s.mix)
        candidates = lists | "AllCandidates" >> beam.Flatten() if lists else records.pipeline | "NoCandidates" >> beam.Create([])
        # The positives' dense scores feed the positive-aware filter and are kept in the rows.
        dense = inputs.embedded
        if g.near_duplicates.active:
            shards = max(s.candidates.bm25.shards, s.candidates.dense.shards)  # the MinHash index is sharded like the others
            candidates = candidates | "DropNearDuplicates" >> DropNearDuplicateCandidates(
                g.near_duplicates, records, self.corpus.docs, s.candidates.work_dir, shards, None if dense is None else dense.docs)
        if guard is not None:
            candidates = guard.negatives(candidates)
        positive_scores = None if dense is None else records | "PositiveScores" >> PositiveScores(dense.queries, dense.docs)
        if self.rewrite is not None:
            records = records | self.rewrite
        rows = (
            (records, candidates)
            | "SampleNegatives" >> SampleNegatives(s.seed, s.mix, s.policy, positive_scores)
            | "AttachTexts" >> AttachTexts(self.corpus.docs)
        )
        if s.denoise is not None:
            denoised = rows | "CrossEncoderDenoise" >> CrossEncoderDenoise(s.denoise, s.candidates.work_dir)
            denoised["report"] | "WriteCeFlagged" >> WriteDeadLetters(s.output.path, CE_REPORT_PREFIX)
            rows = denoised["rows"]
        o = s.output
        if guard is not None:
            rows = guard.positives(rows)
            guard.reports | "AllLeakage" >> beam.Flatten() | "WriteLeakage" >> WriteDeadLetters(o.path, LEAKAGE_PREFIX)
        if g.audit_sample:
            rows | "AuditSample" >> WriteAuditSample(AuditSettings(g.audit_sample, s.seed, o.format, o.ntuple_negatives), o.path)
        (
            self.corpus.dead + self.dead
            | "AllDeadLetters" >> beam.Flatten()
            | "CountDeadLetters" >> beam.Map(_count_dead)
            | "WriteDeadLetters" >> WriteDeadLetters(s.output.path)
        )
        if o.query_clusters:  # clusters of the records' original queries, those the candidates were retrieved with
            clusters = query_vectors(inputs) | "ClusterQueries" >> ClusterQueries(o.query_clusters, s.seed)
            rows = rows | "AttachQueryClusters" >> AttachClusters(clusters)
        return rows | "WriteTriples" >> WriteTriples(o.path, o.format, s.config, o.num_shards, o.ntuple_negatives,
                                                     query_clusters=bool(o.query_clusters))


def _count_dead(d: Dict[str, str]) -> Dict[str, str]:
    Metrics.counter("dead_letter", d["input"]).inc()
    return d
