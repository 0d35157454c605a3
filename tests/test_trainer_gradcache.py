"""GradCache leaves the loss and every parameter gradient of one pass over the whole batch (to 1e-5),
alone and across two gloo ranks with cross-batch negatives, and replays dropout exactly."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from test_trainer_distributed import EXAMPLES, RANK_EXAMPLES, load_model
from tripleminer.trainer.data import collate
from tripleminer.trainer.distributed import DistContext, sum_across_ranks, wrap_model
from tripleminer.trainer.grad_cache import GradCache, RngState, chunk_slices
from tripleminer.trainer.losses import ContrastiveLoss

pytestmark = pytest.mark.slow  # loads MiniLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CPU = torch.device("cpu")
# (loss, triplet negatives): InfoNCE, and the triplet variants whose negatives depend on the scores or the owners.
OBJECTIVES = [("infonce", "all"), ("triplet", "hardest_in_batch"), ("triplet", "mined")]
RTOL, ATOL = 1e-5, 1e-6  # measured: at most 2e-7 apart, on gradients up to 0.27


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of a few texts: one intra-op thread is faster, and not stalled by a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_sync_unless_last(wrapped: torch.nn.Module):
    return lambda last: contextlib.nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()


def loss_and_grads(model, wrapped, examples, objective, chunk=0, queue=None):
    """Loss and parameter gradients of one batch, in one pass (chunk 0) or with GradCache."""
    batch = collate(examples)
    criterion = ContrastiveLoss(objective[0], temperature=0.5, margin=1.0, cross_batch=True,
                                triplet_negative=objective[1])

    def loss_fn(queries, passages):
        return criterion(queries, passages, batch.query_keys, batch.passage_keys, queue, batch.passage_owners)

    if chunk:
        loss, _, _ = GradCache(wrapped, chunk, CPU)(batch.queries, batch.passages, loss_fn, torch.Tensor.backward,
                                                    no_sync_unless_last(wrapped))
    else:
        loss = loss_fn(*wrapped(batch.queries, batch.passages))
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return (sum_across_ranks(loss.detach()) / world_size).item(), grads


def assert_same(result, expected):
    (loss, grads), (expected_loss, expected_grads) = result, expected
    assert loss == pytest.approx(expected_loss, rel=RTOL)
    assert grads.keys() == expected_grads.keys() and len(grads) > 90
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=RTOL, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def one_pass(model):
    return {objective: loss_and_grads(model, model, EXAMPLES, objective) for objective in OBJECTIVES}


def test_chunks_pair_query_and_passage_slices_and_cover_both():
    slices = chunk_slices(5, 10, 3)
    assert len(slices) == 4
    assert [(q.start, q.stop) for q, _ in slices] == [(0, 1), (1, 2), (2, 3), (3, 5)]
    assert [(p.start, p.stop) for _, p in slices] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert max(p.stop - p.start for _, p in chunk_slices(7, 40, 6)) <= 6
    assert chunk_slices(3, 0, 8) == [(slice(0, 3), slice(0, 0))]  # LTRe embeds queries only


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_grad_cache_equals_one_pass(model, one_pass, objective, chunk):
    """chunk 1 also gives chunks without any query (5 queries over 10 chunks)."""
    assert_same(loss_and_grads(model, model, EXAMPLES, objective, chunk), one_pass[objective])


def test_grad_cache_equals_one_pass_with_a_queue(model):
    torch.manual_seed(3)
    queue = (F.normalize(torch.randn(4, 384), dim=-1), torch.tensor([91, 92, 93, 94]))
    expected = loss_and_grads(model, model, EXAMPLES, ("infonce", "all"), queue=queue)
    assert_same(loss_and_grads(model, model, EXAMPLES, ("infonce", "all"), 2, queue), expected)


def chunked_reference(model, examples, chunk):
    """What GradCache must reproduce with dropout on: each chunk embedded once, with a graph, in order."""
    batch = collate(examples)
    parts = [model(batch.queries[q], batch.passages[p]) for q, p in chunk_slices(len(batch.queries),
                                                                                len(batch.passages), chunk)]
    loss = ContrastiveLoss("infonce", temperature=0.5)(torch.cat([q for q, _ in parts]),
                                                       torch.cat([p for _, p in parts]),
                                                       batch.query_keys, batch.passage_keys)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_dropout_is_replayed_chunk_by_chunk(model, monkeypatch):
    model.train()
    try:
        torch.manual_seed(11)
        expected = chunked_reference(model, EXAMPLES, 3)
        torch.manual_seed(11)
        assert_same(loss_and_grads(model, model, EXAMPLES, ("infonce", "all"), 3), expected)
        # Guard: without the replay the second forward draws other dropout masks, and the gradients differ.
        monkeypatch.setattr(RngState, "replay", lambda self: contextlib.nullcontext())
        torch.manual_seed(11)
        _, unreplayed = loss_and_grads(model, model, EXAMPLES, ("infonce", "all"), 3)
        name = "encoder.0.model.encoder.layer.0.attention.self.query.weight"
        assert not torch.allclose(unreplayed[name], expected[1][name], rtol=1e-3, atol=1e-6)
    finally:
        model.eval()


def rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = load_model()
        wrapped = wrap_model(model, DistContext(rank, world_size, rank, CPU))
        # chunk 2: rank 0 (3 queries, 6 passages) runs 3 chunks, rank 1 (2 queries, 4 passages) runs 2.
        results = {objective: loss_and_grads(model, wrapped, RANK_EXAMPLES[rank], objective, chunk=2)
                   for objective in OBJECTIVES}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_grad_cache_across_two_gloo_ranks_equals_one_pass_on_the_joined_batch(tmp_path, one_pass):
    """DDP with no_sync on all but the last chunk, cross-batch gathers of cached embeddings, and the
    hardest in-batch negative taken over both ranks' passages."""
    mp.spawn(rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for objective in OBJECTIVES:
            assert_same(results[objective], one_pass[objective])
