"""MIL losses and epoch pairing, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hnm.mil.losses import bag_loss, bce, pair_loss, ranking_loss, top_k_mean
from hnm.mil.pairing import EpochOrder

LN2 = math.log(2.0)


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_ranking_loss_is_zero_when_margin_is_satisfied() -> None:
    # top-2 of pos = (3 + 2)/2 = 2.5; top-2 of neg = (0.5 + 0.2)/2 = 0.35; 1 - 2.5 + 0.35 < 0
    loss = ranking_loss(t([3.0, 1.0, 2.0]), t([0.5, 0.2, -4.0]), k=2, margin=1.0)
    assert loss.item() == 0.0


def test_ranking_loss_value_and_gradient_when_violated() -> None:
    pos, neg = t([0.2, 0.1, -1.0]), t([0.4, 0.0, 0.3])
    loss = ranking_loss(pos, neg, k=2, margin=1.0)
    # 1 - (0.2 + 0.1)/2 + (0.4 + 0.3)/2 = 1 - 0.15 + 0.35
    assert loss.item() == pytest.approx(1.2)
    loss.backward()
    # only the top-K patches get gradient, -1/K on the positive bag and +1/K on the negative one
    assert pos.grad.tolist() == pytest.approx([-0.5, -0.5, 0.0])
    assert neg.grad.tolist() == pytest.approx([0.5, 0.0, 0.5])


def test_ranking_loss_with_ties_uses_the_tied_value() -> None:
    # four tied top logits, K = 2: the top-2 mean is 1 whichever two are taken
    loss = ranking_loss(t([1.0, 1.0, 1.0, 1.0, -2.0]), t([0.5, 0.5, 0.5]), k=2, margin=1.0)
    assert loss.item() == pytest.approx(1 - 1.0 + 0.5)


def test_ranking_loss_caps_k_at_the_bag_size() -> None:
    # K = 10 > bag sizes 1 and 2: means over the whole bags, 0 and 0.5
    assert ranking_loss(t([0.0]), t([1.0, 0.0]), k=10, margin=1.0).item() == pytest.approx(1.5)
    # pos mean 2, neg mean -0.25: 1 - 2 - 0.25 < 0
    assert ranking_loss(t([2.0]), t([0.5, -1.0]), k=10, margin=1.0).item() == 0.0
    assert top_k_mean(t([4.0, 2.0]), 10).item() == pytest.approx(3.0)


def test_ranking_loss_margin_is_a_setting() -> None:
    # gap = 2 - 0 = 2: zero at margin 1, 3 - 2 = 1 at margin 3
    assert ranking_loss(t([2.0]), t([0.0]), k=1, margin=1.0).item() == 0.0
    assert ranking_loss(t([2.0]), t([0.0]), k=1, margin=3.0).item() == pytest.approx(1.0)


def test_bce_matches_the_closed_form() -> None:
    assert bce(torch.tensor(0.0), 1.0).item() == pytest.approx(LN2)
    assert bce(torch.tensor(2.0), 1.0).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert bce(torch.tensor(2.0), 0.0).item() == pytest.approx(math.log(1 + math.exp(2)))


def test_pair_loss_hand_computed() -> None:
    # all BCE terms at logit 0 are ln 2; ranking with K = 1: 1 - 0 + 0 = 1
    positive = (torch.tensor(0.0), torch.tensor([0.0, -1.0]))
    negative = (torch.tensor(0.0), torch.tensor([0.0, -2.0]))
    loss = pair_loss(positive, negative, w_bag=0.5, w_instance=0.5, w_rank=0.1, k=1, margin=1.0)
    assert loss.item() == pytest.approx(0.5 * LN2 + 0.5 * LN2 + 0.1)
    no_rank = pair_loss(positive, negative, w_bag=0.5, w_instance=0.5, w_rank=0.0, k=1, margin=1.0)
    assert no_rank.item() == pytest.approx(LN2)


def test_pair_loss_uses_the_max_instance_of_each_bag() -> None:
    positive = (torch.tensor(1.0), torch.tensor([-3.0, 2.0]))  # max 2
    negative = (torch.tensor(-1.0), torch.tensor([0.5, -4.0]))  # max 0.5
    loss = pair_loss(positive, negative, w_bag=1.0, w_instance=1.0, w_rank=0.0, k=1, margin=1.0)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-1.0))) / 2 + (
        math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(0.5))
    ) / 2
    assert loss.item() == pytest.approx(expected)


def test_bag_loss_hand_computed() -> None:
    loss = bag_loss(torch.tensor(2.0), torch.tensor([1.0, -3.0]), 1.0)
    assert loss.item() == pytest.approx(
        0.5 * math.log(1 + math.exp(-2)) + 0.5 * math.log(1 + math.exp(-1))
    )
    loss0 = bag_loss(torch.tensor(2.0), torch.tensor([1.0, -3.0]), 0.0, w_bag=1.0, w_instance=0.0)
    assert loss0.item() == pytest.approx(math.log(1 + math.exp(2)))


def test_pairs_take_min_of_classes_and_use_every_bag_over_epochs() -> None:
    positives = np.array([0, 1, 2])
    negatives = np.array([10, 11, 12, 13, 14, 15, 16])
    order = EpochOrder(seed=7)
    seen: set[int] = set()
    for _ in range(12):
        pairs = order.pairs(positives, negatives)
        assert len(pairs) == 3
        pos = [p for p, _ in pairs]
        neg = [n for _, n in pairs]
        assert sorted(pos) == [0, 1, 2]  # the smaller class is used whole, once
        assert set(neg) <= set(negatives.tolist()) and len(set(neg)) == 3  # no repeats
        seen.update(neg)
    assert seen == set(negatives.tolist())  # the surplus gets its turn in later epochs


def test_pairs_are_reproducible_and_resume_from_saved_state() -> None:
    positives, negatives = np.arange(5), np.arange(5, 9)
    a, b = EpochOrder(3), EpochOrder(3)
    assert [a.pairs(positives, negatives) for _ in range(3)] == [
        b.pairs(positives, negatives) for _ in range(3)
    ]
    state = a.state()
    expected = [a.pairs(positives, negatives) for _ in range(2)]
    resumed = EpochOrder(99)
    resumed.restore(state)
    assert [resumed.pairs(positives, negatives) for _ in range(2)] == expected
    assert EpochOrder(4).pairs(positives, negatives) != EpochOrder(3).pairs(positives, negatives)


def test_bag_order_is_a_permutation_each_epoch() -> None:
    order = EpochOrder(0)
    first, second = order.bags(np.arange(20)), order.bags(np.arange(20))
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second
