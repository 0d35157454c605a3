"""Ranked candidate negatives (bm25, ann) through one mechanism: shard, fan out, merge.

The corpus is split into S shards by a stable hash of the doc id; one worker builds each shard's
index and writes it under the work directory (any Beam filesystem), in a folder named by a hash of
its content and settings, so later runs that hash the same reuse it. Query batches fan out to every
shard, each shard returns its top-k, and a per-query merge gives the global top-k: exact for exact
indices (BM25 shards score with corpus-wide statistics, computed once). S=1 is the plain local case.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from tripleminer.index import bm25, dense
from tripleminer.index.shards import merge_top_k, shard_of
from tripleminer.io.fs import is_local, local_copy, upload_dir
from tripleminer.schemas.mix import SourceMix
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.common import Progress, candidates, timed

if TYPE_CHECKING:
    from tripleminer.transforms.candidates import CandidateInputs

_MARKER = {"bm25": bm25.SETTINGS_FILE, "ann": dense.SETTINGS_FILE}  # written last by each build


def _settings_key(*parts: Any) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=6).hexdigest()


def publish_shard(kind: str, work_dir: str, settings_key: str, shard: int, content: "hashlib._Hash",
                  build: Callable[[str], None], marker: Optional[str] = None) -> str:
    """Build a shard's index with `build(local_dir)` unless an identical one is already published
    (its `marker` file, the one a build writes last; default: bm25's or ann's); returns its folder. Written to a temporary folder first and moved or uploaded when complete,
    so a crashed build never looks finished."""
    index_dir = FileSystems.join(work_dir, "indices", f"{kind}-{settings_key}", f"shard-{shard}-{content.hexdigest()}")
    if FileSystems.exists(FileSystems.join(index_dir, marker or _MARKER[kind])):
        return index_dir
    with timed(f"{kind}_index_build"):
        if is_local(index_dir):  # build beside the final folder, then rename (same filesystem: atomic)
            parent = os.path.dirname(index_dir)
            os.makedirs(parent, exist_ok=True)
            local = tempfile.mkdtemp(prefix=".building-", dir=parent)
            build(local)
            try:
                os.replace(local, index_dir)
            except OSError:  # another worker published the same shard first
                shutil.rmtree(local, ignore_errors=True)
        else:
            local = tempfile.mkdtemp(prefix=f"tripleminer-{kind}-")
            build(local)
            upload_dir(local, index_dir)
    return index_dir


class AssignShards(beam.PTransform):
    """(doc_id, payload) -> (shard, [(doc_id, payload), ...]) in doc-id order."""

    def __init__(self, num_shards: int) -> None:
        super().__init__()
        self.num_shards = num_shards

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        n = self.num_shards
        return (
            items
            | "AssignShard" >> beam.Map(lambda kv: (shard_of(kv[0], n), kv))
            | "GroupShard" >> beam.GroupByKey()
            | "SortShard" >> beam.MapTuple(lambda shard, kvs: (shard, sorted(kvs, key=lambda kv: kv[0])))
        )


# --- BM25 ------------------------------------------------------------------------------------


def _batch_stats(batch: List[Dict[str, Any]], stemmer: str) -> bm25.CorpusStats:
    return bm25.CorpusStats.of(bm25.analyze([passage_text(d) for d in batch], stemmer))


def _merge_stats(parts: Iterable[bm25.CorpusStats]) -> bm25.CorpusStats:
    return functools.reduce(bm25.CorpusStats.merge, parts, bm25.CorpusStats())


def build_bm25_shard(element: Tuple[int, List[Tuple[str, str]]], settings: bm25.BM25Settings,
                     stats: bm25.CorpusStats, work_dir: str) -> Tuple[int, str]:
    shard, items = element
    ids, texts = [d for d, _ in items], [t for _, t in items]
    content = hashlib.blake2b(digest_size=10)
    content.update(stats.fingerprint())
    for doc_id, text in items:
        content.update(doc_id.encode() + b"\x1f" + text.encode() + b"\x1e")
    key = _settings_key(sorted(asdict(settings).items()))
    return shard, publish_shard("bm25", work_dir, key, shard, content,
                                lambda local: bm25.build(ids, texts, settings, local, stats))


class BuildBM25Shards(beam.PTransform):
    """Corpus -> (shard, index dir) for each of S shards, all scored with corpus-wide statistics."""

    def __init__(self, settings: bm25.BM25Settings, num_shards: int, work_dir: str) -> None:
        super().__init__()
        self.settings, self.num_shards, self.work_dir = settings, num_shards, work_dir

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        stats = (
            docs
            | "BatchDocs" >> beam.BatchElements(min_batch_size=64, max_batch_size=2048)
            | "BatchStats" >> beam.Map(_batch_stats, self.settings.stemmer)
            | "CorpusStats" >> beam.CombineGlobally(_merge_stats)
        )
        return (
            docs
            | "DocTexts" >> beam.Map(lambda d: (d["doc_id"], passage_text(d)))
            | "Shards" >> AssignShards(self.num_shards)
            | "BuildShard" >> beam.Map(build_bm25_shard, self.settings, beam.pvalue.AsSingleton(stats), self.work_dir)
        )


# --- dense (ANN) -----------------------------------------------------------------------------


def build_ann_shard(element: Tuple[int, List[Tuple[str, Any]]], settings: dense.AnnSettings,
                    work_dir: str, model_key: str) -> Tuple[int, str]:
    shard, items = element
    ids = [doc_id for doc_id, _ in items]
    vectors = np.stack([np.asarray(v, dtype=np.float32) for _, v in items])
    content = hashlib.blake2b("\x1f".join(ids).encode(), digest_size=10)
    content.update(vectors.tobytes())
    key = _settings_key(model_key, sorted(asdict(settings).items()))
    return shard, publish_shard("ann", work_dir, key, shard, content,
                                lambda local: dense.build(ids, vectors, settings, local))


class BuildAnnShards(beam.PTransform):
    """(doc_id, vector) -> (shard, FAISS index dir) for each of S shards."""

    def __init__(self, settings: dense.AnnSettings, num_shards: int, work_dir: str, model_key: str) -> None:
        super().__init__()
        self.settings, self.num_shards, self.work_dir, self.model_key = settings, num_shards, work_dir, model_key

    def expand(self, doc_vectors: beam.PCollection) -> beam.PCollection:
        return (
            doc_vectors
            | "Shards" >> AssignShards(self.num_shards)
            | "BuildShard" >> beam.Map(build_ann_shard, self.settings, self.work_dir, self.model_key)
        )


# --- search: fan out to every shard, merge per query ----------------------------------------

LOADERS = {"bm25": bm25.BM25Shard, "ann": dense.AnnShard}


class _LoadedShards:
    """The shards a worker process has loaded, shared by its threads (`apache_beam.utils.shared`)."""

    def __init__(self, source: str) -> None:
        self.source, self.by_dir, self.lock = source, {}, threading.Lock()

    def get(self, index_dir: str) -> Any:
        with self.lock:
            if index_dir not in self.by_dir:
                self.by_dir[index_dir] = LOADERS[self.source](local_copy(index_dir))
            return self.by_dir[index_dir]


class _SearchShard(beam.DoFn):
    """Search one shard with a batch of queries; each shard loads once per worker process."""

    def __init__(self, source: str, depth: int) -> None:
        self.source, self.depth = source, depth
        self._shared = shared.Shared()
        self.queries = Metrics.counter("retrieval", f"{source}_shard_queries")
        self.progress = Progress(f"{source} search", "query-shard pairs")

    def setup(self) -> None:
        self.shards = self._shared.acquire(lambda: _LoadedShards(self.source), tag=self.source)

    def process(self, element: Tuple[int, List[Tuple[str, Any]]], shard_dirs: Dict[int, str]) -> Iterator[Tuple[str, Tuple[List[str], List[float]]]]:
        shard, batch = element
        if shard not in shard_dirs:  # no document hashed to this shard (tiny corpora)
            return
        index = self.shards.get(shard_dirs[shard])
        with timed(f"{self.source}_search"):
            ids, scores = index.search([payload for _, payload in batch], self.depth)
        self.queries.inc(len(batch))
        self.progress.add(len(batch))
        for (qid, _), row_ids, row_scores in zip(batch, ids, scores):
            yield qid, (row_ids, row_scores)


class _Merge(beam.DoFn):
    def __init__(self, source: str, depth: int, min_score: Optional[float]) -> None:
        self.source, self.depth, self.min_score = source, depth, min_score
        self.no_match = Metrics.counter("retrieval", f"{source}_queries_without_match")

    def process(self, element: Tuple[str, Iterable[Tuple[List[str], List[float]]]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
        qid, parts = element
        ids, scores = merge_top_k(list(parts), self.depth)
        ranked = [(d, r, s) for r, (d, s) in enumerate(zip(ids, scores), start=1)
                  if self.min_score is None or s > self.min_score]
        if not ranked:
            self.no_match.inc()
            return
        doc_ids, ranks, vals = zip(*ranked)
        yield qid, candidates(self.source, doc_ids, ranks=ranks, scores=vals)


class ShardedSearch(beam.PTransform):
    """(query_id, query payload) -> (query_id, candidates of `source`, ranks 1..depth of the merged ranking).

    Positives stay in the ranking, so ranks are the retriever's own; the sampler excludes them.
    `min_score` drops results at or below it (a BM25 score of 0 means no query term matched).
    """

    def __init__(self, source: str, shard_dirs: beam.PCollection, num_shards: int, depth: int,
                 batch_size: int = 512, min_score: Optional[float] = None) -> None:
        super().__init__()
        if source not in LOADERS:
            raise ValueError(f"unknown ranked source {source!r}")
        self.source, self.shard_dirs, self.num_shards, self.depth = source, shard_dirs, num_shards, depth
        self.batch_size, self.min_score = batch_size, min_score

    def expand(self, queries: beam.PCollection) -> beam.PCollection:
        n = self.num_shards
        return (
            queries
            | "Batch" >> beam.BatchElements(min_batch_size=min(64, self.batch_size), max_batch_size=self.batch_size)
            | "FanOut" >> beam.FlatMap(lambda batch: [(s, batch) for s in range(n)])
            | "SearchShard" >> beam.ParDo(_SearchShard(self.source, self.depth), beam.pvalue.AsDict(self.shard_dirs))
            | "GroupByQuery" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_Merge(self.source, self.depth, self.min_score))
        )


class BM25Negatives(beam.PTransform):
    """Query records -> (query_id, bm25 candidates) from the shards in `shard_dirs`."""

    def __init__(self, shard_dirs: beam.PCollection, num_shards: int, depth: int, batch_size: int = 512) -> None:
        super().__init__()
        self.search = ShardedSearch("bm25", shard_dirs, num_shards, depth, batch_size, min_score=0.0)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "QueryText" >> beam.Map(lambda r: (r["query_id"], r["query"])) | "Search" >> self.search


class PositiveScores(beam.PTransform):
    """Dense score of every (query, positive): what the positive-aware filter compares candidates to.

    Inputs: query records, (query_id, vector) and (doc_id, vector). Output:
    (query_id, {positive doc_id: cosine}). Only the positives' vectors are shuffled to the join: the
    positive doc ids (ids only, like the corpus-id side input) filter the corpus vectors first.
    """

    def __init__(self, query_vectors: beam.PCollection, doc_vectors: beam.PCollection) -> None:
        super().__init__()
        self.query_vectors, self.doc_vectors = query_vectors, doc_vectors

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        wanted = records | "PositiveDocs" >> beam.FlatMap(lambda r: [(p["doc_id"], r["query_id"]) for p in r["positives"]])
        positive_ids = wanted | "PositiveIds" >> beam.Keys() | "IdSet" >> beam.combiners.ToSet()
        vectors = self.doc_vectors | "OnlyPositiveDocs" >> beam.Filter(
            lambda kv, ids: kv[0] in ids, beam.pvalue.AsSingleton(positive_ids, default_value=frozenset()))
        by_query = (
            {"queries": wanted, "vector": vectors}
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


# Candidate builders of the source table (`schemas.mix.SOURCES`, `transforms.candidates`).


def bm25_candidates(inputs: CandidateInputs, m: SourceMix) -> beam.PCollection:
    s = inputs.settings.bm25
    shards = inputs.docs | "BuildBM25Shards" >> BuildBM25Shards(s.index, s.shards, inputs.settings.work_dir)
    batch = inputs.settings.query_batch_size
    return inputs.records | "BM25Negatives" >> BM25Negatives(shards, s.shards, s.depth_for(m), batch)


def ann_candidates(inputs: CandidateInputs, m: SourceMix) -> beam.PCollection:
    s, dense_vectors = inputs.settings.dense, inputs.dense()
    shards = dense_vectors.docs | "BuildAnnShards" >> BuildAnnShards(s.index, s.shards, inputs.settings.work_dir, dense_vectors.key)
    batch = inputs.settings.query_batch_size
    return dense_vectors.queries | "AnnNegatives" >> ShardedSearch("ann", shards, s.shards, s.depth_for(m), batch)
