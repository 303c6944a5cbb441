"""The reference DSMIL variant (the authors' bag branch) against a hand-written numpy computation of
its formulas (docs/method.md, "The two DSMIL variants"), its batched forward against its per-bag
one, and the refusal to load one variant's weights into the other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hnm.core.errors import CheckpointError, ConfigError
from hnm.mil import build_aggregator
from hnm.mil.batch import make_batch
from hnm.mil.dsmil import DSMIL, state_dict_variant
from hnm.mil.dsmil_reference import ReferenceDSMIL
from hnm.mil.settings import MilSettings
from hnm.mil.train import load_model, new_run

DIM = 6
LENGTHS = (5, 1, 9, 3)  # unequal, one single-patch bag


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def _reference_numpy(model: ReferenceDSMIL, h: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(bag logit, instance logits, attention) of one bag, formula by formula, in float64:
    s = Linear(d,1)(h); g = ReLU(Linear(d,d)(h)); m = argmax s; q = Tanh(Linear(d,128)(g));
    A = softmax(q q_m / sqrt(128)); v = Linear(d,d)(g); B = A^T v; bag = Conv1d(1,1,d)(B)."""
    s = h @ _np(model.instance.weight)[0] + _np(model.instance.bias)[0]
    shared_layer, query_layer = model.shared[0], model.query[0]
    g = np.maximum(h @ _np(shared_layer.weight).T + _np(shared_layer.bias), 0.0)
    m = int(np.argmax(s))
    q = np.tanh(g @ _np(query_layer.weight).T + _np(query_layer.bias))
    logits = q @ q[m] / np.sqrt(128.0)
    a = np.exp(logits - logits.max())
    a /= a.sum()
    v = g @ _np(model.value.weight).T + _np(model.value.bias)
    b = a @ v
    kernel = _np(model.bag.weight)[0, 0]  # Conv1d over a length-d input with kernel d: one dot
    return float(kernel @ b + _np(model.bag.bias)[0]), s, a


@pytest.fixture
def model() -> ReferenceDSMIL:
    torch.manual_seed(0)
    return ReferenceDSMIL(DIM)


@pytest.fixture
def bags() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((n, DIM)) for n in LENGTHS]


def _tensor(h: np.ndarray) -> torch.Tensor:
    return torch.tensor(h, dtype=torch.float32)


def test_forward_matches_the_formulas(model: ReferenceDSMIL, bags: list[np.ndarray]) -> None:
    for h in bags:
        bag_logit, instance_logits = model(_tensor(h))
        expected_bag, expected_s, expected_a = _reference_numpy(model, h)
        assert bag_logit.shape == () and instance_logits.shape == (len(h),)
        assert instance_logits.detach().numpy() == pytest.approx(expected_s, abs=1e-5)
        assert bag_logit.item() == pytest.approx(expected_bag, abs=1e-5)
        _, _, attention = model.instance_shared_attention(_tensor(h))
        assert attention.detach().numpy() == pytest.approx(expected_a, abs=1e-6)


@pytest.mark.parametrize("concat", [False, True], ids=["per-bag rows", "concatenated rows"])
def test_forward_batch_matches_the_formulas_and_the_per_bag_forward(
    model: ReferenceDSMIL, bags: list[np.ndarray], concat: bool
) -> None:
    bag_logits, instance_logits = model.forward_batch(
        make_batch([_tensor(h) for h in bags], concat=concat)
    )
    assert bag_logits.shape == (len(bags),)
    assert instance_logits.shape == (len(bags), max(LENGTHS))
    for b, h in enumerate(bags):
        expected_bag, expected_s, _ = _reference_numpy(model, h)
        n = len(h)
        assert bag_logits[b].item() == pytest.approx(expected_bag, abs=1e-5)
        assert instance_logits[b, :n].detach().numpy() == pytest.approx(expected_s, abs=1e-5)
        assert torch.isneginf(instance_logits[b, n:]).all()  # padding
        per_bag_logit, per_bag_instances = model(_tensor(h))
        assert torch.allclose(bag_logits[b], per_bag_logit, rtol=1e-5, atol=1e-6)
        assert torch.allclose(instance_logits[b, :n], per_bag_instances, rtol=1e-5, atol=1e-6)


def test_batched_gradients_equal_the_per_bag_ones(
    model: ReferenceDSMIL, bags: list[np.ndarray]
) -> None:
    """Pooling g before the value map changes the order of the sums, not the gradients."""
    bag_logits, _ = model.forward_batch(make_batch([_tensor(h) for h in bags]))
    batched = torch.autograd.grad(bag_logits.sum(), list(model.parameters()), allow_unused=True)
    per_bag_sum = sum(model(_tensor(h))[0] for h in bags)
    per_bag = torch.autograd.grad(per_bag_sum, list(model.parameters()), allow_unused=True)
    names = [name for name, _ in model.named_parameters()]
    for name, new, old in zip(names, batched, per_bag):
        if name.startswith("instance."):  # reached only through the argmax: no gradient
            assert new is None and old is None
        else:
            assert torch.allclose(new, old, rtol=1e-5, atol=1e-6), name


def test_the_setting_builds_the_variant() -> None:
    assert isinstance(build_aggregator("dsmil", DIM, "reference"), ReferenceDSMIL)
    assert type(build_aggregator("dsmil", DIM)) is DSMIL  # fast is the default
    with pytest.raises(ConfigError, match="unknown DSMIL variant"):
        build_aggregator("dsmil", DIM, "original")
    run = new_run(MilSettings(dsmil="reference"), DIM, torch.device("cpu"))
    assert isinstance(run.model, ReferenceDSMIL)
    with pytest.raises(ConfigError, match="dsmil"):
        MilSettings(dsmil="original")


def test_one_variants_weights_are_refused_by_the_other() -> None:
    fast, reference = DSMIL(DIM), ReferenceDSMIL(DIM)
    assert state_dict_variant(fast.state_dict()) == "fast"
    assert state_dict_variant(reference.state_dict()) == "reference"
    with pytest.raises(CheckpointError, match="'reference' DSMIL variant but the model is the"):
        fast.load_state_dict(reference.state_dict())
    with pytest.raises(CheckpointError, match="'fast' DSMIL variant .* mil.dsmil: fast"):
        reference.load_state_dict(fast.state_dict())
    ReferenceDSMIL(DIM).load_state_dict(reference.state_dict())  # its own kind loads


def _save_model(path, state_dict: dict, **fields) -> None:  # noqa: ANN001
    torch.save(
        {"state_dict": state_dict, "aggregator": "dsmil", "feature_dim": DIM, **fields}, path
    )


def test_model_file_loads_as_the_variant_it_names(tmp_path, model: ReferenceDSMIL) -> None:  # noqa: ANN001
    _save_model(tmp_path / "reference.pt", model.state_dict(), dsmil="reference")
    loaded = load_model(tmp_path / "reference.pt")
    assert isinstance(loaded, ReferenceDSMIL)
    h = torch.randn(4, DIM)
    assert torch.equal(loaded(h)[0], model.eval()(h)[0])
    # a model.pt written before the variants existed holds the fast one and says nothing
    _save_model(tmp_path / "old.pt", DSMIL(DIM).state_dict())
    assert type(load_model(tmp_path / "old.pt")) is DSMIL
    _save_model(tmp_path / "mislabelled.pt", model.state_dict(), dsmil="fast")
    with pytest.raises(CheckpointError, match="mislabelled.pt cannot be loaded: these weights"):
        load_model(tmp_path / "mislabelled.pt")
