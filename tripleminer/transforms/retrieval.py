"""Ranked candidate negatives: BM25 and dense (ANN) retrieval over the corpus, in query batches.

Indices are built by workers, written under the work directory (any Beam filesystem) in folders
named by a hash of their content and settings, and reused by later runs that hash the same.
Searching workers load them once each and answer whole batches of queries at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tripleminer.index import bm25, dense
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


# --- dense (ANN) retrieval: S index shards by doc-id hash, fan-out search, exact per-query merge ---


def build_ann_shard(element: Tuple[int, Iterable[Tuple[str, Any]]], settings: dense.AnnSettings, work_dir: str, model_key: str) -> Tuple[int, str]:
    """Build one shard's FAISS index (or find it cached: the folder name hashes its content)."""
    shard, items = element
    items = sorted(items, key=lambda kv: kv[0])
    ids = [doc_id for doc_id, _ in items]
    vectors = np.stack([np.asarray(v, dtype=np.float32) for _, v in items])
    settings_key = hashlib.blake2b(repr((model_key, sorted(asdict(settings).items()))).encode(), digest_size=6)
    content = hashlib.blake2b("\x1f".join(ids).encode(), digest_size=10)
    content.update(vectors.tobytes())
    index_dir = FileSystems.join(
        work_dir, "indices", f"ann-{settings_key.hexdigest()}", f"shard-{shard}-{content.hexdigest()}"
    )
    if not FileSystems.exists(FileSystems.join(index_dir, "tripleminer_ann.json")):
        with timed("ann_index_build"):
            local = tempfile.mkdtemp(prefix="tripleminer-ann-")
            dense.build(ids, vectors, settings, local)
            upload_dir(local, index_dir)
    return shard, index_dir


class BuildAnnShards(beam.PTransform):
    """(doc_id, vector) -> (shard, index dir) for each of `num_shards` shards; use as an AsDict side input."""

    def __init__(self, settings: dense.AnnSettings, num_shards: int, work_dir: str, model_key: str) -> None:
        super().__init__()
        self.settings, self.num_shards, self.work_dir, self.model_key = settings, num_shards, work_dir, model_key

    def expand(self, doc_vectors: beam.PCollection) -> beam.PCollection:
        n = self.num_shards
        return (
            doc_vectors
            | "AssignShard" >> beam.Map(lambda kv: (dense.shard_of(kv[0], n), kv))
            | "GroupShard" >> beam.GroupByKey()
            | "BuildShard" >> beam.Map(build_ann_shard, self.settings, self.work_dir, self.model_key)
        )


class _SearchShard(beam.DoFn):
    """Search one shard with a batch of query vectors; shards load once per worker."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._shards: Dict[str, dense.AnnShard] = {}

    def process(self, element: Tuple[int, List[Tuple[str, Any]]], shard_dirs: Dict[int, str]) -> Iterator[Tuple[str, Tuple[List[str], List[float]]]]:
        shard, batch = element
        if shard not in shard_dirs:  # a shard with no documents (tiny corpora)
            return
        index_dir = shard_dirs[shard]
        if index_dir not in self._shards:
            self._shards[index_dir] = dense.AnnShard(local_copy(index_dir))
        qids = [qid for qid, _ in batch]
        with timed("ann_search"):
            ids, scores = self._shards[index_dir].search(np.stack([v for _, v in batch]), self.depth)
        for qid, row_ids, row_scores in zip(qids, ids, scores):
            yield qid, (row_ids, row_scores[: len(row_ids)].tolist())


def _merge_ann(element: Tuple[str, Iterable[Tuple[List[str], List[float]]]], depth: int) -> Iterator[Tuple[str, Dict[str, Any]]]:
    qid, parts = element
    ids, scores = dense.merge_top_k(list(parts), depth)
    if ids:
        yield qid, candidates("ann", ids, ranks=range(1, len(ids) + 1), scores=scores)


class AnnNegatives(beam.PTransform):
    """(query_id, query vector) -> (query_id, ANN candidates, ranks 1..depth of the merged ranking).

    Each query batch fans out to every shard; a per-query merge of the shards' top-`depth` gives
    the exact global top-`depth` for exact indices. Positives stay in the ranking (so ranks are
    the model's) and are excluded by the sampler.
    """

    def __init__(self, shard_dirs: beam.PCollection, num_shards: int, depth: int, batch_size: int = 512) -> None:
        super().__init__()
        self.shard_dirs, self.num_shards, self.depth, self.batch_size = shard_dirs, num_shards, depth, batch_size

    def expand(self, query_vectors: beam.PCollection) -> beam.PCollection:
        n, depth = self.num_shards, self.depth
        return (
            query_vectors
            | "Batch" >> beam.BatchElements(min_batch_size=min(64, self.batch_size), max_batch_size=self.batch_size)
            | "FanOut" >> beam.FlatMap(lambda batch: [(s, batch) for s in range(n)])
            | "SearchShard" >> beam.ParDo(_SearchShard(depth), beam.pvalue.AsDict(self.shard_dirs))
            | "GroupByQuery" >> beam.GroupByKey()
            | "Merge" >> beam.FlatMap(_merge_ann, depth)
        )


class PositiveScores(beam.PTransform):
    """Dense score of every (query, positive): what the positive-aware filter compares candidates to.

    Inputs: query records, (query_id, vector) and (doc_id, vector). Output:
    (query_id, {positive doc_id: cosine}).
    """

    def __init__(self, query_vectors: beam.PCollection, doc_vectors: beam.PCollection) -> None:
        super().__init__()
        self.query_vectors, self.doc_vectors = query_vectors, doc_vectors

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        wanted = records | "PositiveDocs" >> beam.FlatMap(lambda r: [(p["doc_id"], r["query_id"]) for p in r["positives"]])
        by_query = (
            {"queries": wanted, "vector": self.doc_vectors}
            | "JoinDocVectors" >> beam.CoGroupByKey()
            | "ByQuery" >> beam.FlatMap(
                lambda kv: [(qid, (kv[0], kv[1]["vector"][0])) for qid in kv[1]["queries"]] if kv[1]["vector"] else []
            )
        )
        return (
            {"positives": by_query, "query": self.query_vectors}
            | "JoinQueryVector" >> beam.CoGroupByKey()
            | "Score" >> beam.FlatMap(
                lambda kv: [(kv[0], {d: float(np.dot(kv[1]["query"][0], v)) for d, v in kv[1]["positives"]})]
                if kv[1]["query"] else []
            )
        )
