"""BM25 indices behind one small interface, with two backends.

`bm25s` (default) scores with sparse matrices and answers thousands of queries a second;
`rank_bm25` is the package the original design named, kept selectable for comparison. Both use
the same analyzer (lowercase, English stopwords, Snowball stemming), so their rankings differ only
by their BM25 variants.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass
from typing import List, Protocol, Sequence, Tuple

import numpy as np

BACKENDS = ("bm25s", "rank_bm25")
_IDS_FILE = "doc_ids.json.gz"
_SETTINGS_FILE = "tripleminer_bm25.json"
_TOKENS_FILE = "corpus_tokens.jsonl.gz"


@dataclass(frozen=True)
class BM25Settings:
    backend: str = "bm25s"
    k1: float = 0.9  # Anserini's BEIR defaults
    b: float = 0.4
    stemmer: str = "english"  # a PyStemmer language, or "" for none

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown BM25 backend {self.backend!r}; choose one of {BACKENDS}")


def analyze(texts: Sequence[str], stemmer_language: str) -> List[List[str]]:
    """Tokens as both backends index them: lowercased words, stopwords removed, stemmed."""
    import bm25s

    stemmer = None
    if stemmer_language:
        import Stemmer

        stemmer = Stemmer.Stemmer(stemmer_language)
    return bm25s.tokenize(
        list(texts), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )


Ranking = Tuple[np.ndarray, np.ndarray]  # (doc indices [n_queries, k], scores [n_queries, k])


class BM25Index(Protocol):
    doc_ids: List[str]

    def search(self, queries: Sequence[str], k: int) -> Ranking: ...


class _BM25sIndex:
    def __init__(self, retriever, doc_ids: List[str], settings: BM25Settings) -> None:
        self.retriever, self.doc_ids, self.settings = retriever, doc_ids, settings

    def search(self, queries: Sequence[str], k: int) -> Ranking:
        k = min(k, len(self.doc_ids))
        tokens = analyze(queries, self.settings.stemmer)
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return docs, scores


class _RankBM25Index:
    def __init__(self, tokens: List[List[str]], doc_ids: List[str], settings: BM25Settings) -> None:
        from rank_bm25 import BM25Okapi

        self.model = BM25Okapi(tokens, k1=settings.k1, b=settings.b)
        self.doc_ids, self.settings = doc_ids, settings

    def search(self, queries: Sequence[str], k: int) -> Ranking:
        k = min(k, len(self.doc_ids))
        tokens = analyze(queries, self.settings.stemmer)
        docs = np.zeros((len(queries), k), dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        for row, query in enumerate(tokens):
            all_scores = self.model.get_scores(query)
            top = np.argpartition(-all_scores, k - 1)[:k]
            top = top[np.lexsort((top, -all_scores[top]))]  # by score, ties by index: deterministic
            docs[row], scores[row] = top, all_scores[top]
        return docs, scores


def build(doc_ids: Sequence[str], texts: Sequence[str], settings: BM25Settings, out_dir: str) -> None:
    """Index `texts` and save everything needed to search them into the local `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    tokens = analyze(texts, settings.stemmer)
    if settings.backend == "bm25s":
        import bm25s

        retriever = bm25s.BM25(k1=settings.k1, b=settings.b)
        retriever.index(tokens, show_progress=False)
        retriever.save(out_dir, show_progress=False)
    else:
        with gzip.open(os.path.join(out_dir, _TOKENS_FILE), "wt", encoding="utf-8") as f:
            for row in tokens:
                f.write(json.dumps(row) + "\n")
    with gzip.open(os.path.join(out_dir, _IDS_FILE), "wt", encoding="utf-8") as f:
        json.dump(list(doc_ids), f)
    with open(os.path.join(out_dir, _SETTINGS_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(settings), f)


def load(index_dir: str) -> BM25Index:
    """Open an index written by `build` (JSON and numpy files only: nothing is unpickled)."""
    with open(os.path.join(index_dir, _SETTINGS_FILE), encoding="utf-8") as f:
        settings = BM25Settings(**json.load(f))
    with gzip.open(os.path.join(index_dir, _IDS_FILE), "rt", encoding="utf-8") as f:
        doc_ids = json.load(f)
    if settings.backend == "bm25s":
        import bm25s

        retriever = bm25s.BM25.load(index_dir, show_progress=False, allow_pickle=False)
        return _BM25sIndex(retriever, doc_ids, settings)
    with gzip.open(os.path.join(index_dir, _TOKENS_FILE), "rt", encoding="utf-8") as f:
        tokens = [json.loads(line) for line in f]
    return _RankBM25Index(tokens, doc_ids, settings)
