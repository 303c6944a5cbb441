"""SupCon against a direct, loop-by-loop numpy computation of the formula in docs/method.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hnm.core.errors import ConfigError
from hnm.finetune.supcon import supcon_loss

T = 0.07


def reference(z: np.ndarray, labels: list[int], mode: str) -> float:
    """L_i = -1/|P(i)| sum_p [l_ip - log sum_{a in A(i)} exp(l_ia)], mean over counted anchors."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    anchor_label = {"negative": 0, "positive": 1}[mode]
    losses = []
    for i, label in enumerate(labels):
        if label != anchor_label:
            continue
        others = [a for a in range(len(labels)) if a != i and labels[a] != -1]
        positives = [p for p in others if labels[p] == label]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(z[i] @ z[a] / T) for a in others))
        losses.append(-np.mean([z[i] @ z[p] / T - log_denominator for p in positives]))
    return float(np.mean(losses)) if losses else 0.0


@pytest.fixture
def views() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.normal(size=(4, 5))


@pytest.mark.parametrize("mode", ["negative", "positive"])
@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1],  # two patches x two views
        [0, 1, 0, 1],
        [0, 0, 0, 1],  # the positive anchor has no positive: uncounted
        [0, 0, 1, -1],  # an uncertain view: out of every denominator
        [0, -1, 1, 1],
    ],
)
def test_matches_direct_computation(views: np.ndarray, labels: list[int], mode: str) -> None:
    expected = reference(views, labels, mode)
    got = supcon_loss(torch.tensor(views), torch.tensor(labels), mode, T)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_hand_computed_orthogonal_case() -> None:
    # z0 = z1 = e1, z2 = e2, z3 = -e1, temperature 1 (so float32 keeps the digits). Negative
    # anchors 0 and 1 are each other's positive: L = -(1 - log(e^1 + e^0 + e^-1)) for both.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = -(1 - math.log(math.e + 1 + math.exp(-1)))
    loss = supcon_loss(z, torch.tensor([0, 0, 1, 1]), "negative", 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Masking view 3 (uncertain) removes its e^-1 term.
    expected_masked = -(1 - math.log(math.e + 1))
    loss = supcon_loss(z, torch.tensor([0, 0, 1, -1]), "negative", 1.0)
    assert loss.item() == pytest.approx(expected_masked, rel=1e-6)
    # Positive anchors 2 and 3 are each other's positive (z2.z3 = 0):
    l2 = -(0 - math.log(1 + 1 + 1))  # z2 . (z0, z1, z3) = 0, 0, 0
    l3 = -(0 - math.log(math.exp(-1) * 2 + 1))  # z3 . (z0, z1, z2) = -1, -1, 0
    loss = supcon_loss(z, torch.tensor([0, 0, 1, 1]), "positive", 1.0)
    assert loss.item() == pytest.approx((l2 + l3) / 2, rel=1e-6)


def test_no_counted_anchor_gives_zero_with_a_gradient() -> None:
    z = torch.randn(4, 8, requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 1, -1, -1]), "negative", T)  # lone negative
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


def test_uncertain_views_get_no_gradient_and_large_logits_stay_finite() -> None:
    z = (torch.randn(6, 8) * 1e3).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, -1, -1])
    loss = supcon_loss(z, labels, "positive", T)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(z.grad[4:] == 0) and torch.any(z.grad[:4] != 0)


def test_bad_mode_and_shapes() -> None:
    with pytest.raises(ConfigError, match="mode"):
        supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), "both")
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(torch.randn(4, 3), torch.zeros(3, dtype=torch.long), "negative")
