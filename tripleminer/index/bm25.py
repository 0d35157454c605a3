"""BM25 index shards behind one small interface, with two backends and corpus-wide statistics.

`bm25s` (default) scores with sparse matrices and answers thousands of queries a second;
`rank_bm25` is the package the original design named, kept selectable for comparison. Both use
the same analyzer (lowercase, English stopwords, Snowball stemming), so their rankings differ only
by their BM25 variants.

BM25 scores depend on corpus-wide statistics (document frequencies, document count, average
length). They are computed once over the whole corpus (`CorpusStats`, mergeable, so Beam can
combine them) and every shard is built with them, so a document scores the same in its shard as
in one index over the whole corpus, and the merged per-shard top-k is the global top-k.
"""

from __future__ import annotations

import hashlib

import gzip
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

BACKENDS = ("bm25s", "rank_bm25")
_IDS_FILE = "doc_ids.json.gz"
SETTINGS_FILE = "tripleminer_bm25.json"
_TOKENS_FILE = "corpus_tokens.jsonl.gz"
_IDF_FILE = "idf.json.gz"


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
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)


@dataclass
class CorpusStats:
    """Document count, total length and document frequencies of a corpus; `merge` adds two parts."""

    n_docs: int = 0
    total_len: int = 0
    df: Dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, tokens: Iterable[List[str]]) -> "CorpusStats":
        stats, df = cls(), Counter()
        for doc in tokens:
            stats.n_docs += 1
            stats.total_len += len(doc)
            df.update(set(doc))
        stats.df = dict(df)
        return stats

    def merge(self, other: "CorpusStats") -> "CorpusStats":
        df = Counter(self.df)
        df.update(other.df)
        return CorpusStats(self.n_docs + other.n_docs, self.total_len + other.total_len, dict(df))

    @property
    def avg_len(self) -> float:
        return self.total_len / max(self.n_docs, 1)

    def fingerprint(self) -> bytes:
        """Identifies the statistics every shard scores with: count, length and every term's document
        frequency (an edit in one shard changes the others' scores through them)."""
        digest = hashlib.blake2b(repr((self.n_docs, self.total_len)).encode(), digest_size=16)
        for term, count in sorted(self.df.items()):
            digest.update(f"{term}\x1f{count}\x1e".encode())
        return digest.digest()


Ranking = Tuple[List[List[str]], List[List[float]]]  # per query: doc ids and scores, best first


class BM25Shard:
    """A loaded shard (or a whole corpus when there is one shard): `search` returns doc ids."""

    def __init__(self, index_dir: str) -> None:
        with open(os.path.join(index_dir, SETTINGS_FILE), encoding="utf-8") as f:
            self.settings = BM25Settings(**json.load(f))
        with gzip.open(os.path.join(index_dir, _IDS_FILE), "rt", encoding="utf-8") as f:
            self.doc_ids: List[str] = json.load(f)
        if self.settings.backend == "bm25s":
            import bm25s

            self._bm25s = bm25s.BM25.load(index_dir, show_progress=False, allow_pickle=False)
        else:
            self._okapi = _load_okapi(index_dir, self.settings)

    def search(self, queries: Sequence[str], k: int) -> Ranking:
        k = min(k, len(self.doc_ids))
        tokens = analyze(queries, self.settings.stemmer)
        if self.settings.backend == "bm25s":
            docs, scores = self._bm25s.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        else:
            docs, scores = _okapi_top_k(self._okapi, tokens, k)
        return [[self.doc_ids[d] for d in row] for row in docs], [list(map(float, row)) for row in scores]


def build(doc_ids: Sequence[str], texts: Sequence[str], settings: BM25Settings, out_dir: str,
          stats: Optional[CorpusStats] = None) -> None:
    """Index `texts` into the local `out_dir`, scoring with `stats` (default: these texts' own)."""
    os.makedirs(out_dir, exist_ok=True)
    tokens = analyze(texts, settings.stemmer)
    stats = stats or CorpusStats.of(tokens)
    if settings.backend == "bm25s":
        _build_bm25s(tokens, stats, settings, out_dir)
    else:
        with gzip.open(os.path.join(out_dir, _TOKENS_FILE), "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in tokens)
        vocab = {t for row in tokens for t in row}
        idf = _okapi_idf(stats)
        with gzip.open(os.path.join(out_dir, _IDF_FILE), "wt", encoding="utf-8") as f:
            json.dump({"avg_len": stats.avg_len, "idf": {t: idf[t] for t in vocab}}, f)
    with gzip.open(os.path.join(out_dir, _IDS_FILE), "wt", encoding="utf-8") as f:
        json.dump(list(doc_ids), f)
    with open(os.path.join(out_dir, SETTINGS_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(settings), f)


def _build_bm25s(tokens: List[List[str]], stats: CorpusStats, settings: BM25Settings, out_dir: str) -> None:
    import bm25s
    from bm25s.scoring import _build_scores_and_indices_for_matrix, _calculate_doc_freqs, _select_idf_scorer

    vocab = {t: i for i, t in enumerate(sorted({t for row in tokens for t in row}))}
    vocab[""] = len(vocab)  # lets a query with no known token return zero scores instead of failing
    ids = [[vocab[t] for t in row] for row in tokens]
    idf_of = _select_idf_scorer("lucene")
    idf = np.zeros(len(vocab), dtype="float32")
    for token, i in vocab.items():
        if stats.df.get(token):
            idf[i] = idf_of(stats.df[token], N=stats.n_docs)

    class GlobalStatsBM25(bm25s.BM25):
        """bm25s, scoring with the corpus-wide idf and average length instead of this shard's."""

        def build_index_from_ids(self, unique_token_ids, corpus_token_ids, show_progress=True, leave_progress=False):
            self.nonoccurrence_array = None  # only BM25L/BM25+ use one; this is Lucene's BM25
            local_df = _calculate_doc_freqs(corpus_token_ids, unique_token_ids, show_progress=False)
            data, rows, cols = _build_scores_and_indices_for_matrix(
                corpus_token_ids, idf, stats.avg_len, local_df, self.k1, self.b, self.delta, None,
                method=self.method, dtype=self.dtype, int_dtype=self.int_dtype, show_progress=False,
            )
            data, indices, indptr = self._np_csc(data=data, rows=rows, cols=cols, shape=(len(corpus_token_ids), len(unique_token_ids)))
            return {"data": data.astype(self.dtype), "indices": indices, "indptr": indptr, "num_docs": len(corpus_token_ids)}

    retriever = GlobalStatsBM25(k1=settings.k1, b=settings.b, method="lucene")
    retriever.index((ids, vocab), show_progress=False)
    retriever.save(out_dir, show_progress=False)


def _okapi_idf(stats: CorpusStats, epsilon: float = 0.25) -> Dict[str, float]:
    """rank-bm25's BM25Okapi idf (with its epsilon floor for very common terms), corpus-wide."""
    idf = {t: math.log(stats.n_docs - df + 0.5) - math.log(df + 0.5) for t, df in stats.df.items()}
    floor = epsilon * (sum(idf.values()) / max(len(idf), 1))
    return {t: (v if v >= 0 else floor) for t, v in idf.items()}


def _load_okapi(index_dir: str, settings: BM25Settings):
    from rank_bm25 import BM25Okapi

    with gzip.open(os.path.join(index_dir, _TOKENS_FILE), "rt", encoding="utf-8") as f:
        tokens = [json.loads(line) for line in f]
    with gzip.open(os.path.join(index_dir, _IDF_FILE), "rt", encoding="utf-8") as f:
        corpus_wide = json.load(f)
    okapi = BM25Okapi(tokens, k1=settings.k1, b=settings.b)
    okapi.idf, okapi.avgdl = corpus_wide["idf"], corpus_wide["avg_len"]
    return okapi


def _okapi_top_k(okapi, tokens: List[List[str]], k: int) -> Tuple[np.ndarray, np.ndarray]:
    docs = np.zeros((len(tokens), k), dtype=np.int64)
    scores = np.zeros((len(tokens), k), dtype=np.float32)
    for row, query in enumerate(tokens):
        all_scores = okapi.get_scores(query)
        top = np.argpartition(-all_scores, k - 1)[:k]
        top = top[np.lexsort((top, -all_scores[top]))]  # by score, ties by index: deterministic
        docs[row], scores[row] = top, all_scores[top]
    return docs, scores
