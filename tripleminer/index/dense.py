"""FAISS index shards: one per shard of the corpus (see `shards`), searched with the same settings.

With an exact index (`Flat`) the merge of the shards' top-k is exactly the top-k of one index over
the whole corpus; approximate ones (`IVF...`, `HNSW...`) trade that for speed on large corpora.
Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, List, Sequence, Tuple

import numpy as np


_INDEX_FILE = "index.faiss"
_IDS_FILE = "doc_ids.json"
SETTINGS_FILE = "tripleminer_ann.json"


@dataclass(frozen=True)
class AnnSettings:
    factory: str = "Flat"  # any FAISS index_factory string: Flat, IVF1024,Flat, HNSW32, ...
    nprobe: int = 16  # IVF cells searched per query
    ef_search: int = 128  # HNSW search breadth

    def __post_init__(self) -> None:
        import faiss

        try:
            faiss.index_factory(8, self.factory, faiss.METRIC_INNER_PRODUCT)
        except Exception as err:  # faiss raises RuntimeError with a C++ message
            raise ValueError(f"bad FAISS factory string {self.factory!r}: {err}") from None


def build(doc_ids: Sequence[str], vectors: np.ndarray, settings: AnnSettings, out_dir: str) -> None:
    """Index one shard's vectors (rows aligned with `doc_ids`) into the local `out_dir`."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], settings.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if len(vectors) < 39 * _cells(index):
            raise ValueError(
                f"{settings.factory}: a shard of {len(vectors)} vectors is too small to train "
                f"{_cells(index)} cells (FAISS wants 39 per cell); use fewer cells, fewer shards, or Flat"
            )
        index.train(vectors)
    index.add(vectors)
    os.makedirs(out_dir, exist_ok=True)
    faiss.write_index(index, os.path.join(out_dir, _INDEX_FILE))
    with open(os.path.join(out_dir, _IDS_FILE), "w", encoding="utf-8") as f:
        json.dump(list(doc_ids), f)
    with open(os.path.join(out_dir, SETTINGS_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(settings), f)


def _cells(index) -> int:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    return ivf.nlist if ivf is not None else 1


class AnnShard:
    """A loaded shard: searches return doc ids, not positions."""

    def __init__(self, index_dir: str) -> None:
        import faiss

        self.index = faiss.read_index(os.path.join(index_dir, _INDEX_FILE))
        with open(os.path.join(index_dir, _IDS_FILE), encoding="utf-8") as f:
            self.doc_ids: List[str] = json.load(f)
        with open(os.path.join(index_dir, SETTINGS_FILE), encoding="utf-8") as f:
            settings = AnnSettings(**json.load(f))
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = settings.nprobe
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = settings.ef_search

    def search(self, queries: Sequence[Any], k: int) -> Tuple[List[List[str]], List[List[float]]]:
        """Top-k doc ids and cosines for each query vector (fewer where an approximate index finds fewer)."""
        k = min(k, len(self.doc_ids))
        matrix = np.ascontiguousarray(np.stack([np.asarray(q, dtype=np.float32) for q in queries]))
        scores, positions = self.index.search(matrix, k)
        ids = [[self.doc_ids[p] for p in row if p >= 0] for row in positions]
        return ids, [row[: len(found)].tolist() for row, found in zip(scores, ids)]
