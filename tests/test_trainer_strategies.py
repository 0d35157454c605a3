"""Topic-aware batches (--batch_by_cluster) and LTRe (--loss ltre): batches of one cluster, the LTRe
pairwise loss and exact index, and a short LTRe run that trains the query tower only."""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from test_trainer_data import row
from test_trainer_gradcache import one_thread  # noqa: F401  (autouse)
from test_trainer_train import CLAIMS, shards  # noqa: F401  (the fixture: 6 rows in two shards)
from tripleminer.schemas.outputs import NESTED_SCHEMA
from tripleminer.trainer.arguments import parse_train_args
from tripleminer.trainer.cli import train_main
from tripleminer.trainer.data import (
    CLUSTER_COLUMN,
    NegativeMix,
    TripleStream,
    list_row_groups,
    require_cluster_column,
    split_range,
    stable_key,
    training_loader,
)
from tripleminer.trainer.ltre import DocumentIndex, LTReLoss, pairwise_loss
from tripleminer.trainer.model import resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROWS, CLUSTERS, BATCH = 41, 4, 3


def cluster_of(i: int) -> int:
    return (i * 7) % CLUSTERS  # clusters of 11, 10, 10 and 10 rows, interleaved in row order


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> str:
    """The nested schema plus the integer query_cluster column a later pipeline change writes."""
    folder = tmp_path_factory.mktemp("clustered")
    table = pa.Table.from_pylist([row(i) for i in range(ROWS)], schema=NESTED_SCHEMA)
    table = table.append_column(pa.field(CLUSTER_COLUMN, pa.int64()), pa.array([cluster_of(i) for i in range(ROWS)]))
    with pq.ParquetWriter(folder / "triples-00000-of-00002.parquet", table.schema) as writer:
        writer.write_table(table.slice(0, 9))
        writer.write_table(table.slice(9, 11))
    pq.write_table(table.slice(20), folder / "triples-00001-of-00002.parquet", row_group_size=8)
    return str(folder / "triples-*.parquet")


def stream(shards: str, rank: int, world_size: int, shuffle_buffer: int = 8) -> TripleStream:
    return TripleStream(list_row_groups([shards]), NegativeMix.parse("bm25:1"), seed=5, rank=rank,
                        world_size=world_size, shuffle_buffer=shuffle_buffer)


def clusters(batch) -> set:
    return {cluster_of(int(q.split()[1])) for q in batch.queries}


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 0), (2, 2)])
def test_each_batch_holds_one_cluster_until_the_clusters_run_dry(clustered, world_size, num_workers):
    seen = Counter()
    for rank in range(world_size):
        rank_stream = stream(clustered, rank, world_size)
        batches = list(training_loader(rank_stream, BATCH, num_workers, by_cluster=True, seed=5))
        assert len(batches) == rank_stream.batches_per_epoch(BATCH, num_workers)  # as many steps as plain batches
        seen.update(q for batch in batches for q in batch.queries)
        # Each reader (worker) fills floor(n / BATCH) batches from a cluster of n of its rows; the rest is mixed.
        start = rank * rank_stream.rows_per_rank
        per_reader = [Counter(r[CLUSTER_COLUMN] for r in rank_stream._rows(lo, hi))
                      for lo, hi in (split_range(start, start + rank_stream.rows_per_rank, max(num_workers, 1), w)
                                     for w in range(max(num_workers, 1)))]
        full = sum(n // BATCH for counts in per_reader for n in counts.values())
        pure = [b for b in batches if len(b.queries) == BATCH and len(clusters(b)) == 1]
        assert len(pure) >= full > 0
        if num_workers == 0:  # one reader: its pure batches come first, then the mixed remainder
            assert all(len(clusters(b)) == 1 for b in batches[:full])
            assert len(batches) - full == math.ceil(sum(n % BATCH for n in per_reader[0].values()) / BATCH)
    assert max(seen.values()) == 1 and len(seen) == ROWS - ROWS % world_size


def test_plain_batches_would_mix_clusters(clustered):
    """Guard for the test above: the same stream batched plainly is not one cluster per batch."""
    batches = list(training_loader(stream(clustered, 0, 1), BATCH, 0, by_cluster=False, seed=5))
    assert sum(len(clusters(b)) == 1 for b in batches) < len(batches) // 2


def test_shards_without_the_cluster_column_are_refused_before_training(shards, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="query_cluster"):
        require_cluster_column(list_row_groups([shards]))
    with pytest.raises(ValueError, match="query_cluster"):
        train_main(["--triples", shards, "--batch_by_cluster", "--output_dir", str(tmp_path / "m")])


def test_ltre_options_are_checked():
    for bad in (["--loss", "ltre"], ["--loss", "ltre", "--ltre_corpus", "c.jsonl", "--queue_size", "8"]):
        with pytest.raises(SystemExit):
            parse_train_args(["--triples", "x", *bad])


def test_ltre_pairwise_loss_matches_hand_computation():
    # Candidates ranked 1..3, the second relevant: pairs (2, 1) and (2, 3), weights |1/2 - 1| and |1/2 - 1/3|.
    scores = torch.tensor([2.0, 1.0, 0.0])
    loss = pairwise_loss(scores, torch.tensor([False, True, False]), top_k=3)
    expected = (0.5 * math.log(1 + math.exp(1.0)) + (1 / 6) * math.log(1 + math.exp(-1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # A relevant document appended below the top-k weighs as rank "infinity": the pair weight is 1/rank-.
    appended = pairwise_loss(torch.tensor([2.0, 1.0, 3.0]), torch.tensor([False, False, True]), top_k=2)
    expected = (1.0 * math.log(1 + math.exp(-1.0)) + 0.5 * math.log(1 + math.exp(-2.0))) / 2
    assert appended.item() == pytest.approx(expected, rel=1e-6)


def documents(count: int = 64, dim: int = 16) -> torch.Tensor:
    return F.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(0)), dim=-1)


def test_cpu_index_is_exact_and_gives_rows_back():
    docs = documents()
    index = DocumentIndex(docs)
    assert index.index is not None and len(index) == 64  # FAISS on CPU
    queries = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert torch.equal(index.search(queries, 7), torch.topk(queries @ docs.T, 7, dim=1).indices)
    ids = torch.tensor([[3, 0], [63, 3]])
    assert torch.equal(index.rows(ids.flatten()), docs[ids.flatten()])


def test_ltre_steps_pull_an_unretrieved_relevant_document_up_the_full_ranking():
    docs = documents()
    query = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    relevant = torch.topk(query @ docs.T, 40, dim=1).indices[0, -1]  # ranked 40th
    loss_fn = LTReLoss(DocumentIndex(docs), {stable_key("q"): relevant[None]}, top_k=10, temperature=0.05)
    query = query.clone().requires_grad_()
    start = loss_fn(query, torch.tensor([stable_key("q")])).item()
    for _ in range(20):
        loss = loss_fn(query, torch.tensor([stable_key("q")]))
        (grad,) = torch.autograd.grad(loss, query)
        query = (query - 0.05 * grad).detach().requires_grad_()
    scores = docs @ F.normalize(query.detach(), dim=-1)[0]
    assert start > 0 and int((scores > scores[relevant]).sum()) + 1 < 10  # now retrieved in the top 10


def write_corpus(path, extra: int = 12) -> None:
    rows = [{"_id": f"p{i}", "title": None, "text": positive} for i, (_, positive, _) in enumerate(CLAIMS)]
    rows += [{"_id": f"n{i}", "title": None, "text": negative} for i, (_, _, negative) in enumerate(CLAIMS)]
    rows += [{"_id": f"x{i}", "title": "", "text": f"An unrelated abstract number {i} about soil chemistry."}
             for i in range(extra)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_ltre_run_trains_the_query_tower_and_keeps_the_indexed_documents(shards, tmp_path):  # noqa: F811
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "model"
    write_corpus(corpus)
    argv = ["--triples", shards, "--loss", "ltre", "--ltre_corpus", str(corpus), "--ltre_top_k", "5",
            "--batch_size", "3", "--max_steps", "2", "--max_seq_length", "16", "--learning_rate", "1e-4",
            "--logging_steps", "1", "--output_dir", str(out), "--disable_tqdm", "--device", "cpu"]
    assert train_main(argv) == 0
    trained, base = SentenceTransformer(str(out), device="cpu"), SentenceTransformer(resolve_model(None), device="cpu")
    texts = [claim for claim, _, _ in CLAIMS]
    kwargs = {"convert_to_numpy": True, "normalize_embeddings": True}
    np.testing.assert_allclose(trained.encode_document(texts, **kwargs), base.encode(texts, **kwargs), atol=1e-5)
    moved = np.linalg.norm(trained.encode_query(texts, **kwargs) - base.encode(texts, **kwargs), axis=1)
    assert np.all(moved > 1e-4)
