"""Candidate negatives of every source the mix names, through the source table.

Each row of `schemas.mix.SOURCES` names the function that builds its source's candidate lists,
`function(inputs, mix) -> PCollection of (query_id, candidates)`, in the module of its
transforms (`negatives.py`, `retrieval.py`). So adding a source is one row plus its module: nothing
here or in the pipelines lists sources. The dense vectors are embedded at most once and shared by
the ann source and the positive-aware filter.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Sequence

import apache_beam as beam

from tripleminer.encoders import EncoderSettings
from tripleminer.index.bm25 import BM25Settings
from tripleminer.index.dense import AnnSettings
from tripleminer.schemas.mix import SOURCES, SourceMix
from tripleminer.schemas.outputs import passage_text
from tripleminer.transforms.embed import EmbedWithCache

DEFAULT_ANN_DEPTH = 500  # ann results per query when neither --ann_depth nor a rank window bounds them
DEFAULT_BM25_DEPTH = 100  # likewise for bm25 and --bm25_depth


def search_depth(depth: Optional[int], m: SourceMix, default: int) -> int:
    """Results per query a ranked source fetches for mix entry `m`: the user's depth, else the end of
    its rank window (nothing past it can be sampled), else the source's default."""
    return depth or m.rank_end or default


@dataclass(frozen=True)
class BM25Search:
    """The bm25 source: index settings, shard count and retrieval depth."""

    index: BM25Settings = BM25Settings()
    shards: int = 1
    depth: Optional[int] = None  # None: the end of the bm25 rank window, or DEFAULT_BM25_DEPTH

    def depth_for(self, m: SourceMix) -> int:
        """How many results the bm25 search of mix entry `m` fetches per query."""
        return search_depth(self.depth, m, DEFAULT_BM25_DEPTH)


@dataclass(frozen=True)
class DenseSearch:
    """The ann source and the positive-aware filter: encoder, its batching, and the FAISS shards."""

    encoder: EncoderSettings
    min_batch_size: int = 32
    max_batch_size: int = 512
    index: AnnSettings = field(default_factory=AnnSettings)
    shards: int = 1
    depth: Optional[int] = None  # None: the end of the ann rank window, or DEFAULT_ANN_DEPTH

    def depth_for(self, m: SourceMix) -> int:
        """How many results the ann search of mix entry `m` fetches per query."""
        return search_depth(self.depth, m, DEFAULT_ANN_DEPTH)


@dataclass(frozen=True)
class CandidateSettings:
    """What every candidate source may read: seed, work folder, and the ranked sources' settings."""

    seed: int
    work_dir: str
    bm25: BM25Search
    dense: DenseSearch
    query_batch_size: int = 512  # queries per retrieval call, bm25 and ann alike


class Dense(NamedTuple):
    """Unit vectors of the corpus and of the queries, from one encoder."""

    key: str  # identifies the encoder's vectors (index folders are named after it)
    docs: beam.PCollection  # (doc_id, vector)
    queries: beam.PCollection  # (query_id, vector)


class CandidateInputs:
    """The collections a source builds its candidates from; `dense()` embeds once, on first use."""

    def __init__(self, settings: CandidateSettings, docs: beam.PCollection, corpus_ids: beam.pvalue.AsSingleton,
                 records: beam.PCollection, log_pairs: Optional[beam.PCollection] = None) -> None:
        self.settings, self.docs, self.corpus_ids, self.records, self.log_pairs = settings, docs, corpus_ids, records, log_pairs
        self._dense: Optional[Dense] = None
        self._queries: Optional[beam.PCollection] = None

    def query_vectors(self) -> beam.PCollection:
        """(query_id, vector) of every record, through the embedding cache; built once, shared by the
        dense sources and anything else that needs the queries' vectors (e.g. --query_clusters)."""
        if self._queries is None:
            d = self.settings.dense
            self._queries = (
                self.records
                | "QueryTexts" >> beam.Map(lambda r: (r["query_id"], r["query"]))
                | "EmbedQueries" >> EmbedWithCache(d.encoder, "query", self.settings.work_dir, d.min_batch_size,
                                                   d.max_batch_size)
            )
        return self._queries

    def dense(self) -> Dense:
        """Embed corpus and queries (through the embedding cache under the work folder)."""
        if self._dense is None:
            d = self.settings.dense
            doc_vectors = (
                self.docs
                | "DocTexts" >> beam.Map(lambda doc: (doc["doc_id"], passage_text(doc)))
                | "EmbedDocs" >> EmbedWithCache(d.encoder, "doc", self.settings.work_dir, d.min_batch_size, d.max_batch_size)
            )
            self._dense = Dense(d.encoder.key(), doc_vectors, self.query_vectors())
        return self._dense

    @property
    def embedded(self) -> Optional[Dense]:
        """The dense vectors if a source needed them, else None."""
        return self._dense


Builder = Callable[[CandidateInputs, SourceMix], beam.PCollection]


def builder(source: str) -> Optional[Builder]:
    """The source table's candidate builder of `source` (None: its candidates travel in the records)."""
    path = SOURCES[source].transform
    if path is None:
        return None
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def candidate_lists(inputs: CandidateInputs, mix: Sequence[SourceMix]) -> List[beam.PCollection]:
    """One `(query_id, candidates)` collection per source of the mix that builds its own."""
    lists = []
    for m in mix:
        build = builder(m.source)
        if build is not None:
            lists.append(build(inputs, m))
    return lists
