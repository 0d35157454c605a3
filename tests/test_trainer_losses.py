"""Contrastive losses, the known-positive mask and the negative queue, on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tripleminer.trainer.losses import (
    ContrastiveLoss,
    hardest_negative,
    info_nce,
    known_positive_mask,
    triplet_margin,
)
from tripleminer.trainer.memory import EmbeddingQueue, MomentumEncoder

SCORES = torch.tensor([[0.5, 0.1, -0.2], [0.3, 0.4, 0.0]])
TARGETS = torch.tensor([0, 1])
NO_MASK = torch.zeros(2, 3, dtype=torch.bool)


def test_info_nce_matches_hand_computation():
    loss = info_nce(SCORES, TARGETS, NO_MASK, temperature=0.1)
    expected = [math.log(1 + math.exp(-4) + math.exp(-7)), math.log(1 + math.exp(-1) + math.exp(-4))]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_info_nce_ignores_masked_candidates():
    mask = NO_MASK.clone()
    mask[0, 1] = True
    loss = info_nce(SCORES, TARGETS, mask, temperature=0.1)
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-7)), abs=1e-6)


def test_triplet_margin_matches_hand_computation():
    # query 1: max(0, 0.2 - 0.4 + 0.3) = 0.1 and max(0, 0.2 - 0.4 + 0.0) = 0, mean 0.05; query 0: all 0.
    assert triplet_margin(SCORES, TARGETS, NO_MASK, margin=0.2).tolist() == pytest.approx([0.0, 0.05], abs=1e-6)
    mask = NO_MASK.clone()
    mask[1, 0] = True
    assert triplet_margin(SCORES, TARGETS, mask, margin=0.2).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_mask_hides_other_positives_of_the_same_query_but_never_the_target():
    query_keys = torch.tensor([1, 2])
    pair_query_keys, pair_doc_keys = torch.tensor([1, 2, 1]), torch.tensor([10, 20, 30])  # query 1 has docs 10, 30
    candidates = torch.tensor([10, 20, 30, 40, 10])  # doc 10 also comes back, e.g. from the queue
    mask = known_positive_mask(query_keys, pair_query_keys, pair_doc_keys, candidates, targets=torch.tensor([0, 1]))
    assert mask.tolist() == [[False, False, True, False, True], [False, False, False, False, False]]


def cosine_ce(queries, candidates, mask=None):
    logits = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T / 0.05
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries)))


def test_contrastive_loss_scores_every_passage_of_the_batch_and_the_queue():
    torch.manual_seed(0)
    queries = torch.randn(3, 8, requires_grad=True)
    passages = torch.randn(6, 8, requires_grad=True)  # 3 positives, then 3 hard negatives
    query_keys, passage_keys = torch.tensor([1, 2, 3]), torch.tensor([11, 12, 13, 14, 15, 16])
    loss = ContrastiveLoss("infonce", temperature=0.05)(queries, passages, query_keys, passage_keys)
    assert loss.item() == pytest.approx(cosine_ce(queries, passages).item(), rel=1e-5)
    loss.backward()
    assert passages.grad[3:].abs().sum() > 0  # hard negatives are pushed away

    queue = (F.normalize(torch.randn(4, 8), dim=-1), torch.tensor([21, 22, 23, 24]))
    with_queue = ContrastiveLoss("infonce", temperature=0.05)(queries, passages, query_keys, passage_keys, queue)
    expected = cosine_ce(queries, torch.cat([passages, queue[0]]))
    assert with_queue.item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_loss_masks_a_second_positive_of_the_same_query():
    torch.manual_seed(1)
    queries, passages = torch.randn(2, 8), torch.randn(4, 8)
    query_keys = torch.tensor([7, 7])  # two rows of one query with different positive documents
    passage_keys = torch.tensor([11, 12, 13, 14])
    loss = ContrastiveLoss("infonce", temperature=0.05)(queries, passages, query_keys, passage_keys)
    mask = torch.tensor([[False, True, False, False], [True, False, False, False]])
    assert loss.item() == pytest.approx(cosine_ce(queries, passages, mask).item(), rel=1e-5)
    assert loss.item() != pytest.approx(cosine_ce(queries, passages).item(), rel=1e-3)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError):
        ContrastiveLoss("hinge")
    with pytest.raises(ValueError):
        ContrastiveLoss("triplet", triplet_negative="softest")


def test_hardest_negative_is_the_argmax_outside_the_excluded():
    excluded = torch.tensor([[True, False, False], [False, True, True]])
    assert hardest_negative(SCORES, excluded).tolist() == [[False, True, False], [True, False, False]]
    assert not hardest_negative(SCORES, torch.ones(2, 3, dtype=torch.bool)).any()  # nothing left to choose


def triplet_batch():
    """3 queries; passages: 3 positives, then query 0's mined negatives (rows 3, 4) and query 1's (row 5), and
    row 6, another copy of query 0's positive document (same key) brought by query 2, the closest to query 0."""
    torch.manual_seed(2)
    queries = torch.randn(3, 8, requires_grad=True)
    passages = torch.randn(7, 8)
    passages[6] = queries[0].detach() * 3
    passages.requires_grad_()
    query_keys, passage_keys = torch.tensor([1, 2, 3]), torch.tensor([11, 12, 13, 14, 15, 16, 11])
    owners = torch.tensor([0, 1, 2, 0, 0, 1, 2])
    return queries, passages, query_keys, passage_keys, owners


def hinge(queries, passages, i, negatives, margin=0.2):
    scores = F.normalize(queries, dim=-1)[i] @ F.normalize(passages, dim=-1).T
    return torch.stack([(margin - scores[i] + scores[j]).clamp(min=0) for j in negatives]).mean()


def test_hardest_in_batch_triplet_takes_the_top_scoring_non_positive_and_skips_copies_of_the_positive():
    queries, passages, query_keys, passage_keys, owners = triplet_batch()
    loss = ContrastiveLoss("triplet", margin=0.2, triplet_negative="hardest_in_batch")(
        queries, passages, query_keys, passage_keys, passage_owners=owners)
    scores = (F.normalize(queries, dim=-1) @ F.normalize(passages, dim=-1).T).detach()
    assert scores[0].argmax() == 6  # the copy of query 0's positive scores highest, and must not be chosen
    hardest = []
    for i in range(3):
        candidates = [j for j in range(7) if j != i and not (i == 0 and j == 6)]
        hardest.append(max(candidates, key=lambda j: scores[i, j]))
    assert hardest[0] != 6
    expected = torch.stack([hinge(queries, passages, i, [j]) for i, j in enumerate(hardest)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    pushed = {j for j in range(3, 7) if passages.grad[j].abs().sum() > 0}
    assert pushed == {j for j in hardest if j >= 3}  # only the chosen negatives move


def test_mined_triplet_uses_only_each_querys_own_negatives():
    queries, passages, query_keys, passage_keys, owners = triplet_batch()
    loss = ContrastiveLoss("triplet", margin=0.2, triplet_negative="mined")(
        queries, passages, query_keys, passage_keys, passage_owners=owners)
    # Row 6 came with query 2, and query 2 does not know document 11 as relevant: its one mined negative.
    expected = torch.stack([hinge(queries, passages, 0, [3, 4]), hinge(queries, passages, 1, [5]),
                            hinge(queries, passages, 2, [6])]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    everything = ContrastiveLoss("triplet", margin=0.2)(queries, passages, query_keys, passage_keys)
    assert everything.item() != pytest.approx(loss.item(), rel=1e-3)


def test_queue_keeps_the_newest_normalised_embeddings_without_gradient():
    queue = EmbeddingQueue(3)
    assert queue.contents() is None and len(queue) == 0
    queue.push(torch.tensor([[2.0, 0.0], [0.0, 3.0]], requires_grad=True), torch.tensor([1, 2]))
    queue.push(torch.tensor([[1.0, 1.0], [0.0, -1.0]]), torch.tensor([3, 4]))
    embeddings, keys = queue.contents()
    assert keys.tolist() == [3, 4, 1]
    assert torch.allclose(embeddings, torch.tensor([[0.5**0.5, 0.5**0.5], [0.0, -1.0], [1.0, 0.0]]))
    assert not embeddings.requires_grad
    with pytest.raises(ValueError):
        EmbeddingQueue(0)


def test_momentum_encoder_moves_towards_the_trained_weights():
    model = torch.nn.Linear(2, 2)
    momentum = MomentumEncoder(model, momentum=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    momentum.update(model)
    assert torch.allclose(momentum.model.weight, 0.9 * start + 0.1 * (start + 1.0))
    assert not momentum.model.weight.requires_grad
    with pytest.raises(ValueError):
        MomentumEncoder(model, momentum=1.0)
