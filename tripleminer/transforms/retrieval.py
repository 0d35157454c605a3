"""Ranked candidate negatives: build a BM25 index over the corpus, then search it in query batches.

The index is built once, written under the work directory (any Beam filesystem), and reused by
later runs whose corpus and settings hash the same. Searching workers load it once each and answer
whole batches of queries at a time, which is where bm25s is fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.index import bm25
from tripleminer.io.fs import is_local, local_copy, upload_dir
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.common import candidates, timed

log = logging.getLogger(__name__)


def corpus_fingerprint(docs: Sequence[Dict[str, Any]]) -> str:
    """A hash of the corpus content in doc-id order: equal corpora share cached indices."""
    h = hashlib.blake2b(digest_size=12)
    for doc in sorted(docs, key=lambda d: d["doc_id"]):
        h.update(doc["doc_id"].encode() + b"\x1f" + passage_text(doc).encode() + b"\x1e")
    return h.hexdigest()


def build_bm25_index(docs: List[Dict[str, Any]], settings: bm25.BM25Settings, work_dir: str) -> str:
    """Build (or find in the cache) the BM25 index of `docs`; returns its directory."""
    key = hashlib.blake2b(repr(sorted(asdict(settings).items())).encode(), digest_size=6).hexdigest()
    index_dir = FileSystems.join(work_dir, "indices", f"bm25-{key}-{corpus_fingerprint(docs)}")
    if FileSystems.exists(FileSystems.join(index_dir, "tripleminer_bm25.json")):
        log.info("BM25 index cached at %s", index_dir)
        return index_dir
    start = time.perf_counter()
    docs = sorted(docs, key=lambda d: d["doc_id"])
    local = index_dir if is_local(index_dir) else tempfile.mkdtemp(prefix="tripleminer-bm25-")
    tmp = local + ".tmp" if is_local(index_dir) else local
    bm25.build([d["doc_id"] for d in docs], [passage_text(d) for d in docs], settings, tmp)
    if is_local(index_dir):
        os.replace(tmp, index_dir)  # atomic: a crashed build never looks finished
    else:
        upload_dir(local, index_dir)
    Metrics.counter("time", "bm25_index_build_ms").inc(int((time.perf_counter() - start) * 1000))
    log.info("BM25 index of %d documents built in %.1fs at %s", len(docs), time.perf_counter() - start, index_dir)
    return index_dir


class BuildBM25Index(beam.PTransform):
    """Corpus -> a one-element PCollection holding the index directory (use it as a side input)."""

    def __init__(self, settings: bm25.BM25Settings, work_dir: str) -> None:
        super().__init__()
        self.settings, self.work_dir = settings, work_dir

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return (
            docs
            | "CollectCorpus" >> beam.combiners.ToList()
            | "BuildIndex" >> beam.Map(build_bm25_index, self.settings, self.work_dir)
        )


class _SearchBatch(beam.DoFn):
    """Search a batch of queries; keep each query's top `depth` minus its positives, with ranks."""

    def __init__(self, source: str, depth: int) -> None:
        self.source, self.depth = source, depth
        self._index_dir = None
        self._index = None
        self.queries = Metrics.counter("retrieval", f"{source}_queries")
        self.no_match = Metrics.counter("retrieval", f"{source}_queries_without_match")

    def _load(self, index_dir: str) -> Any:
        if self._index_dir != index_dir:
            self._index = bm25.load(local_copy(index_dir))
            self._index_dir = index_dir
        return self._index

    def process(self, batch: List[Dict[str, Any]], index_dir: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
        index = self._load(index_dir)
        with timed(f"{self.source}_search"):
            docs, scores = index.search([r["query"] for r in batch], self.depth)
        self.queries.inc(len(batch))
        for record, row_docs, row_scores in zip(batch, docs, scores):
            positives = {p["doc_id"] for p in record["positives"]}
            kept = [
                (index.doc_ids[d], rank, float(s))
                for rank, (d, s) in enumerate(zip(row_docs, row_scores), start=1)
                if s > 0 and index.doc_ids[d] not in positives  # a zero score means no term matched
            ]
            if not kept:
                self.no_match.inc()
                continue
            ids, ranks, vals = zip(*kept)
            yield record["query_id"], candidates(self.source, ids, ranks=ranks, scores=vals)


class BM25Negatives(beam.PTransform):
    """Query records -> (query_id, BM25 candidates from ranks 1..depth, positives removed)."""

    def __init__(self, index_dir: beam.PCollection, depth: int, batch_size: int = 512) -> None:
        super().__init__()
        self.index_dir, self.depth, self.batch_size = index_dir, depth, batch_size

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return (
            records
            | "Batch" >> beam.BatchElements(min_batch_size=min(64, self.batch_size), max_batch_size=self.batch_size)
            | "Search" >> beam.ParDo(_SearchBatch("bm25", self.depth), beam.pvalue.AsSingleton(self.index_dir))
        )
