"""DSMIL against a direct numpy computation of docs/method.md's formulas; ABMIL shapes, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hnm.core.errors import ConfigError
from hnm.mil import build_aggregator
from hnm.mil.abmil import GatedABMIL
from hnm.mil.dsmil import DSMIL


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def _dsmil_numpy(model: DSMIL, h: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The textbook order of operations: v for every instance, then B = A^T v."""
    s = h @ _np(model.instance.weight).T[:, 0] + _np(model.instance.bias)[0]
    m = int(np.argmax(s))
    first, second = model.query[0], model.query[2]
    hidden = np.maximum(h @ _np(first.weight).T + _np(first.bias), 0.0)
    q = np.tanh(hidden @ _np(second.weight).T + _np(second.bias))
    logits = q @ q[m] / np.sqrt(128.0)
    a = np.exp(logits - logits.max())
    a /= a.sum()
    v = h @ _np(model.value.weight).T + _np(model.value.bias)
    b = a @ v
    bag = float(np.sum(_np(model.bag.weight)[0, 0] * b) + _np(model.bag.bias)[0])
    return bag, s, a


def test_dsmil_matches_numpy_on_a_tiny_bag() -> None:
    torch.manual_seed(0)
    model = DSMIL(feature_dim=6)
    h = np.random.default_rng(1).standard_normal((5, 6))
    bag_logit, instance_logits = model(torch.tensor(h, dtype=torch.float32))
    expected_bag, expected_s, expected_a = _dsmil_numpy(model, h)
    assert bag_logit.shape == () and instance_logits.shape == (5,)
    assert instance_logits.detach().numpy() == pytest.approx(expected_s, abs=1e-5)
    assert bag_logit.item() == pytest.approx(expected_bag, abs=1e-5)
    _, attention = model.instance_and_attention(torch.tensor(h, dtype=torch.float32))
    assert attention.detach().numpy() == pytest.approx(expected_a, abs=1e-6)
    assert attention.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_dsmil_critical_instance_is_the_argmax_of_instance_logits() -> None:
    torch.manual_seed(0)
    model = DSMIL(feature_dim=3)
    with torch.no_grad():
        model.instance.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        model.instance.bias.zero_()
    h = torch.tensor([[0.0, 1.0, 2.0], [5.0, -1.0, 0.5], [1.0, 3.0, -2.0]])
    _, attention = model.instance_and_attention(h)
    q = model.query(h)
    expected = torch.softmax(q @ q[1] / np.sqrt(128.0), dim=0)  # instance 1 has the largest logit
    assert torch.allclose(attention, expected)


@pytest.mark.parametrize("cls", [DSMIL, GatedABMIL])
def test_aggregators_shapes_and_permutation_invariance(cls: type[torch.nn.Module]) -> None:
    torch.manual_seed(0)
    model = cls(8)
    h = torch.randn(7, 8)
    bag_logit, instance_logits = model(h)
    assert bag_logit.shape == () and instance_logits.shape == (7,)
    permutation = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    bag_perm, inst_perm = model(h[permutation])
    assert bag_perm.item() == pytest.approx(bag_logit.item(), abs=1e-5)  # a bag is a set
    assert torch.allclose(inst_perm, instance_logits[permutation], atol=1e-6)
    single_bag, single_inst = model(h[:1])
    assert single_bag.shape == () and single_inst.shape == (1,)
    bag_logit.backward()
    without_grad = {name for name, p in model.named_parameters() if p.grad is None}
    # DSMIL's bag branch reaches the instance classifier only through argmax, which has no gradient
    assert without_grad == ({"instance.weight", "instance.bias"} if cls is DSMIL else set())


def test_abmil_bag_logit_is_the_gated_attention_pooling() -> None:
    torch.manual_seed(0)
    model = GatedABMIL(4)
    h = torch.randn(6, 4)
    bag_logit, attention_logits = model(h)
    gate = torch.tanh(model.attention_v(h)) * torch.sigmoid(model.attention_u(h))
    a = torch.softmax(model.attention_w(gate).squeeze(-1), 0)
    assert torch.allclose(attention_logits, model.attention_w(gate).squeeze(-1))
    assert bag_logit.item() == pytest.approx(model.classifier(a @ h).item(), abs=1e-6)


def test_build_aggregator_names() -> None:
    assert isinstance(build_aggregator("dsmil", 4), DSMIL)
    assert isinstance(build_aggregator("abmil", 4), GatedABMIL)
    with pytest.raises(ConfigError, match="unknown MIL aggregator"):
        build_aggregator("transmil", 4)
