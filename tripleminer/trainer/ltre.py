"""LTRe (Zhan et al. 2020; published as ADORE, 2021): train the query tower on full retrieval.

No negative sampling: the document tower embeds the corpus once and stays frozen, so the saved model's
document route still produces exactly the indexed vectors. Each step the batch's queries retrieve
their top-k over the whole corpus, and a pairwise loss pushes every relevant document above every
retrieved irrelevant one: training sees the ranking that retrieval will produce. The pair loss is
RankNet's log(1 + exp(-(s+ - s-))) on cosine similarities over --temperature, weighted as in ADORE's
code by |1/rank+ - 1/rank-| (ranks in the retrieved list; relevant documents none of which was
retrieved are appended below it with weight-rank 0) and averaged over the query's pairs. A query's
relevant documents are all the positives the shards give it.

Memory: one float32 row per document (4 x dim bytes; 1.5 KiB at MiniLM's 384 dimensions), on the GPU
when training there (exact search is then one matmul), else in a FAISS IndexFlatIP (exact, on CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Set

import torch
import torch.nn.functional as F

from tripleminer.trainer.data import RowGroup, positive_pairs, split_range, stable_key
from tripleminer.trainer.distributed import gather_rows, sum_across_ranks, world
from tripleminer.trainer.evaluate import read_corpus
from tripleminer.trainer.model import DOCUMENT, DualEncoder

logger = logging.getLogger("tripleminer.trainer")


class DocumentIndex:
    """Fixed, normalised document embeddings, searched exactly by inner product.

    On a GPU the rows stay a tensor and search is a matmul; on CPU a FAISS IndexFlatIP holds the only
    copy and gives rows back by reconstruction.
    """

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.device = embeddings.device
        if self.device.type == "cuda":
            self.matrix, self.index = embeddings.float(), None
        else:
            import faiss

            self.matrix, self.index = None, faiss.IndexFlatIP(embeddings.shape[1])
            self.index.add(embeddings.float().contiguous().numpy())

    def __len__(self) -> int:
        return len(self.matrix) if self.index is None else self.index.ntotal

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """[Q, k] row numbers of each query's k best documents, best first."""
        k = min(k, len(self))
        if self.index is None:
            return torch.topk(queries.detach().float() @ self.matrix.T, k, dim=1).indices
        _, ids = self.index.search(queries.detach().float().cpu().numpy(), k)
        return torch.from_numpy(ids).to(self.device)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of documents `ids` (no gradient: they are fixed)."""
        if self.index is None:
            return self.matrix[ids]
        return torch.from_numpy(self.index.reconstruct_batch(ids.cpu().numpy())).to(self.device)


def pairwise_loss(scores: torch.Tensor, relevant: torch.Tensor, top_k: int) -> torch.Tensor:
    """One query's loss over its ranked candidates: RankNet on each (relevant, irrelevant) pair, weighted
    |1/rank_i - 1/rank_j| with ranks past `top_k` counting as 1/rank = 0, averaged over pairs."""
    gains = 1.0 / torch.arange(1, len(scores) + 1, device=scores.device, dtype=scores.dtype)
    gains[top_k:] = 0.0
    pairs = relevant[:, None] & ~relevant[None, :]
    weights = (gains[:, None] - gains[None, :]).abs()
    ranknet = F.softplus(scores[None, :] - scores[:, None])  # [i, j]: log(1 + exp(s_j - s_i))
    return (ranknet * weights)[pairs].sum() / pairs.sum().clamp(min=1)


class LTReLoss:
    """This rank's queries against the whole corpus, scaled across ranks like `ContrastiveLoss`."""

    def __init__(self, index: DocumentIndex, relevant: Dict[int, torch.Tensor], top_k: int, temperature: float) -> None:
        self.index, self.relevant, self.top_k, self.temperature = index, relevant, top_k, temperature

    def __call__(self, queries: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
        queries = F.normalize(queries.float(), dim=-1)
        retrieved = self.index.search(queries, self.top_k)
        none = torch.zeros(0, dtype=torch.long, device=queries.device)
        per_query = []
        for query, key, candidates in zip(queries, query_keys.tolist(), retrieved):
            relevant = self.relevant.get(key, none)
            labels = torch.isin(candidates, relevant)
            if not labels.any():
                candidates = torch.cat([candidates, relevant])
                labels = torch.cat([labels, torch.ones_like(relevant, dtype=torch.bool)])
            scores = self.index.rows(candidates) @ query / self.temperature
            per_query.append(pairwise_loss(scores, labels, retrieved.shape[1]))
        _, world_size = world()
        total = sum_across_ranks(torch.tensor(float(len(queries)), device=queries.device))
        return torch.stack(per_query).sum() * world_size / total


def freeze_document_tower(model: DualEncoder) -> None:
    """LTRe trains queries only: the document route keeps the weights that embedded the corpus."""
    if not model.separate_towers:
        raise ValueError("LTRe trains the query tower only: load the model with separate towers")
    model.encoder[0].sub_modules[DOCUMENT].requires_grad_(False)


def embed_corpus(model: DualEncoder, texts: Sequence[str], batch_size: int, show_progress: bool) -> torch.Tensor:
    """Every document through the document tower, each rank a slice, gathered to all ranks."""
    rank, world_size = world()
    lo, hi = split_range(0, len(texts), world_size, rank)
    part = model.encoder.encode_document(list(texts[lo:hi]), batch_size=batch_size, convert_to_tensor=True,
                                         normalize_embeddings=True, show_progress_bar=show_progress)
    return gather_rows(part.float().to(model.device))[0]


def relevant_rows(
    row_groups: Sequence[RowGroup], doc_rows: Dict[str, int], device: torch.device
) -> Dict[int, torch.Tensor]:
    """{query key: corpus rows of all its positives in the shards}."""
    relevant: Dict[int, Set[int]] = {}
    missing: List[str] = []
    for query_id, doc_id in positive_pairs(row_groups):
        if doc_id in doc_rows:
            relevant.setdefault(stable_key(query_id), set()).add(doc_rows[doc_id])
        else:
            missing.append(doc_id)
    if missing:
        logger.warning("%d positives (e.g. %s) are not in the LTRe corpus; their rows add no loss",
                       len(missing), missing[0])
    return {key: torch.tensor(sorted(rows), device=device) for key, rows in relevant.items()}


def build_ltre_loss(model: DualEncoder, row_groups: Sequence[RowGroup], corpus_path: str, top_k: int,
                    temperature: float, batch_size: int, show_progress: bool) -> LTReLoss:
    """Freeze the document tower, embed the corpus with it once, and index the shards' positives."""
    freeze_document_tower(model)
    corpus = read_corpus(Path(corpus_path))
    doc_ids = list(corpus)
    with torch.no_grad():
        index = DocumentIndex(embed_corpus(model, [corpus[d] for d in doc_ids], batch_size, show_progress))
    logger.info("LTRe: %d documents indexed (%.1f MiB of float32 rows)", len(index),
                len(index) * model.encoder.get_embedding_dimension() * 4 / 2**20)
    relevant = relevant_rows(row_groups, {d: i for i, d in enumerate(doc_ids)}, model.device)
    return LTReLoss(index, relevant, top_k, temperature)
