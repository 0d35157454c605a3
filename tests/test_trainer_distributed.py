"""Two gloo ranks with cross-batch negatives give the loss and gradients of one process on the joined batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tripleminer.trainer.data import Example, collate
from tripleminer.trainer.distributed import DistContext, sum_across_ranks, wrap_model
from tripleminer.trainer.losses import LOSSES, ContrastiveLoss
from tripleminer.trainer.model import DualEncoder

pytestmark = pytest.mark.slow  # loads MiniLM in two gloo ranks

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def example(query_id: str, query: str, positive_id: str, positive: str, negative_id: str, negative: str) -> Example:
    return Example(query_id, query, positive_id, positive, (negative_id,), (negative,))


# Uneven ranks (3 and 2 queries); query q0 is on both ranks with different positives, so each rank must
# mask the other rank's positive of q0 instead of treating it as a negative.
EXAMPLES = [
    example("q0", "vitamin d lowers fracture risk", "d1", "Vitamin D and bone fractures in the elderly",
            "n1", "Calcium intake in children"),
    example("q1", "statins reduce mortality", "d2", "Statin therapy and all-cause mortality",
            "n2", "Cholesterol synthesis pathways"),
    example("q2", "smoking causes lung cancer", "d3", "Tobacco smoke and lung carcinoma",
            "n3", "Air pollution in cities"),
    example("q0", "vitamin d lowers fracture risk", "d4", "Hip fractures fall with vitamin D supplements",
            "n4", "Vitamin C and the common cold"),
    example("q3", "aspirin prevents heart attacks", "d5", "Low-dose aspirin in cardiovascular prevention",
            "n5", "Gastric bleeding from NSAIDs"),
]
RANK_EXAMPLES = [EXAMPLES[:3], EXAMPLES[3:]]
CHECKED = (
    "encoder.0.model.embeddings.word_embeddings.weight",
    "encoder.0.model.encoder.layer.0.attention.self.query.weight",
    "encoder.0.model.encoder.layer.5.output.dense.weight",
)


def loss_and_grads(model: torch.nn.Module, wrapped: torch.nn.Module, examples, kind: str):
    """The loss (averaged over ranks) and the per-parameter gradients after DDP's reduction."""
    batch = collate(examples)
    queries, passages = wrapped(batch.queries, batch.passages)
    loss = ContrastiveLoss(kind, temperature=0.5, margin=1.0, cross_batch=True)(
        queries, passages, batch.query_keys, batch.passage_keys
    )
    loss.backward()
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    total = sum_across_ranks(loss) / world_size
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return total.item(), {"norms": {n: g.norm().item() for n, g in grads.items()}, **{n: grads[n] for n in CHECKED}}


def load_model() -> DualEncoder:
    return DualEncoder.from_pretrained(max_seq_length=16, device="cpu").eval()  # eval: no dropout noise


def rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = load_model()
        wrapped = wrap_model(model, DistContext(rank, world_size, rank, torch.device("cpu")))
        results = {kind: loss_and_grads(model, wrapped, RANK_EXAMPLES[rank], kind) for kind in LOSSES}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(rank_main, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def single_process_results(model):
    return {kind: loss_and_grads(model, model, EXAMPLES, kind) for kind in LOSSES}


@pytest.mark.parametrize("kind", LOSSES)
def test_cross_batch_loss_and_gradients_equal_one_process_on_the_joined_batch(
    kind, two_rank_results, single_process_results
):
    loss, grads = single_process_results[kind]
    assert loss > 0
    for rank_loss, rank_grads in (results[kind] for results in two_rank_results):
        assert rank_loss == pytest.approx(loss, rel=1e-5)
        assert rank_grads["norms"].keys() == grads["norms"].keys()
        for name, norm in grads["norms"].items():
            assert rank_grads["norms"][name] == pytest.approx(norm, rel=1e-3, abs=1e-7), name
        for name in CHECKED:
            torch.testing.assert_close(rank_grads[name], grads[name], rtol=1e-3, atol=1e-6)


def test_without_the_second_rank_the_loss_differs(model, single_process_results):
    """Guards the test above: one rank's own batch alone gives another loss, so equality is not trivial."""
    alone, _ = loss_and_grads(model, model, RANK_EXAMPLES[0], "infonce")
    assert alone != pytest.approx(single_process_results["infonce"][0], rel=1e-3)
