"""LoRA adapters on a frozen foundation-model backbone: the math, what one update changes, what
the encoder file and the resumable checkpoint keep, and the rounds' consistency checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from hnm.core.errors import ConfigError
from hnm.encoders import build_encoder, load_encoder_file, save_encoder_file
from hnm.encoders.foundation import add_adapters, build_preset_encoder
from hnm.encoders.lora import LoraConfig, target_layers
from hnm.encoders.presets import get_preset
from hnm.finetune.adapters import prepare_training
from hnm.finetune.settings import FinetuneSettings
from hnm.finetune.train import contrastive_update, make_optimizer


def tiny_encoder(seed: int = 0):  # noqa: ANN201
    return build_preset_encoder("vit_tiny_test", "", seed=seed, proj_dim=16)


def images(count: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_zero_up_projection_equals_the_frozen_model() -> None:
    frozen = tiny_encoder().eval()
    adapted = copy.deepcopy(frozen)
    add_adapters(adapted, LoraConfig(rank=4, alpha=8.0, targets=("qkv", "proj", "fc1")), seed=3)
    assert all(torch.count_nonzero(low.up) == 0 for low in adapted.adapters.layers.values())
    assert all(torch.count_nonzero(low.down) > 0 for low in adapted.adapters.layers.values())
    with torch.no_grad():
        assert torch.equal(adapted.features(images()), frozen.features(images()))


def test_adapted_model_equals_the_closed_form_low_rank_update() -> None:
    """W' = W + (alpha / r) B A on every adapted layer gives the same network."""
    config = LoraConfig(rank=3, alpha=6.0, targets=("qkv", "fc2"), last_blocks=2)
    adapted = tiny_encoder().eval()
    add_adapters(adapted, config, seed=0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for low in adapted.adapters.layers.values():
            low.up.copy_(torch.randn(low.up.shape, generator=generator))
    merged = tiny_encoder().eval()
    names = target_layers(merged.backbone, config)
    assert names == [
        "blocks.1.attn.qkv",
        "blocks.1.mlp.fc2",
        "blocks.2.attn.qkv",
        "blocks.2.mlp.fc2",
    ]
    with torch.no_grad():
        for name in names:
            low = adapted.adapters.layers[name.replace(".", "-")]
            layer = merged.backbone.get_submodule(name)
            layer.weight += (config.alpha / config.rank) * (low.up @ low.down)
        changed = adapted.features(images())
        assert not torch.allclose(changed, tiny_encoder().eval().features(images()), atol=1e-3)
        torch.testing.assert_close(changed, merged.features(images()), atol=1e-5, rtol=1e-4)


def test_one_update_changes_only_adapters_and_head() -> None:
    settings = FinetuneSettings(adapter="lora", lora_rank=2, lora_alpha=4.0)
    model = tiny_encoder()
    prepare_training(model, settings, "r0.pt", torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, settings, None)
    optimizer_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert optimizer_params == {id(p) for p in trainable}
    views = torch.cat([images(), images(seed=2)])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    # Adapters start at zero: the first update moves B (A gets no gradient while B is zero), the
    # second then moves A too.
    for _ in range(2):
        contrastive_update(model, optimizer, views, labels, "negative", settings, "fp32")
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("head.", "adapters.")) for k in changed)
    assert any(k.endswith(".up") for k in changed) and any(k.endswith(".down") for k in changed)
    assert any(k.startswith("head.") for k in changed)
    assert set(model.trainable_state()) == {
        k for k in after if k.startswith(("head.", "adapters."))
    }


def test_encoder_file_with_adapters_holds_no_backbone(tmp_path: Path) -> None:
    tiny = get_preset("vit_tiny_test")
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_encoder(seed=9).backbone.state_dict(), weights)
    model = build_preset_encoder(tiny, str(weights), seed=0, proj_dim=16)
    add_adapters(model, LoraConfig(rank=2), seed=0)
    with torch.no_grad():
        for low in model.adapters.layers.values():
            low.up.normal_()
    save_encoder_file(tmp_path / "r1.pt", model.eval(), source="r0.pt", round=1)
    payload = torch.load(tmp_path / "r1.pt", weights_only=True)
    assert payload["backbone"] == {} and payload["adapters"]["config"]["rank"] == 2
    assert len(payload["adapters"]["state"]) == 2 * 2 * 3  # (A, B) x (qkv, proj) x 3 blocks
    loaded, meta = load_encoder_file(tmp_path / "r1.pt")
    assert meta.adapters == LoraConfig(rank=2).as_dict()
    assert not any(p.requires_grad for p in loaded.backbone.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.features(images()), model.features(images()))
    original = torch.load(weights, weights_only=True)
    assert all(torch.equal(loaded.backbone.state_dict()[k], v) for k, v in original.items())


def test_rounds_must_keep_the_adapters_they_started_with() -> None:
    model = tiny_encoder()
    prepare_training(model, FinetuneSettings(adapter="lora"), "r0.pt", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"r1\.pt was fine-tuned with adapters .*'rank': 8"):
        prepare_training(model, FinetuneSettings(adapter="lora", lora_rank=4), "r1.pt", "cpu")
    with pytest.raises(ConfigError, match="ask for none"):
        prepare_training(model, FinetuneSettings(adapter="none"), "r1.pt", "cpu")
    resnet = build_encoder("resnet_mini")
    with pytest.raises(ConfigError, match="need a transformer encoder"):
        prepare_training(resnet, FinetuneSettings(adapter="lora"), "r0.pt", "cpu")
    with pytest.raises(ConfigError, match="lora_targets"):
        FinetuneSettings(lora_targets=["qkv", "query"])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny_encoder()
        settings = FinetuneSettings(adapter="lora", gradient_checkpointing=checkpointing)
        prepare_training(model, settings, "r0.pt", torch.device("cpu"))
        with torch.no_grad():
            for low in model.adapters.layers.values():
                low.up.fill_(0.01)
        model.train()
        model(images()).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert model.backbone.gradient_checkpointing
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)


def test_resumable_checkpoint_keeps_only_what_trains(tmp_path: Path) -> None:
    """An epoch's checkpoint under adapters holds the head and the adapters (not the frozen
    backbone), and loading it restores them; an epoch that meets an unreadable slide starts again
    from the weights it started from."""
    from hnm.core.checkpoint import Checkpointer
    from hnm.core.errors import SlideError
    from hnm.core.restart import train_skipping_bad_slides

    model = tiny_encoder()
    settings = FinetuneSettings(adapter="lora")
    prepare_training(model, settings, "r0.pt", torch.device("cpu"))
    optimizer = make_optimizer(model, settings, None)
    views = torch.cat([images(), images(seed=2)])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    failures = iter([True, False])
    skipped = []

    def epochs(done: int):  # noqa: ANN202
        for epoch in range(done, 2):
            for _ in range(2):
                contrastive_update(model, optimizer, views, labels, "negative", settings, "fp32")
            if epoch == 1 and next(failures):
                raise SlideError("s1", "s1.svs", "unreadable")
            yield epoch + 1

    checkpointer = Checkpointer(tmp_path / "ckpt", "fp")
    done = train_skipping_bad_slides(
        model, optimizer, 0, 2, epochs, checkpointer, {}, lambda e, n: skipped.append((e, n))
    )
    assert done == 2 and [n for _, n in skipped] == [1]
    state = torch.load(checkpointer.path, weights_only=False)
    assert state["model"] and not any(k.startswith("backbone.") for k in state["model"])
    fresh = tiny_encoder()
    prepare_training(fresh, settings, "r0.pt", torch.device("cpu"))
    fresh.load_trainable_state(state["model"])
    with torch.no_grad():
        assert torch.equal(fresh.features(images()), model.features(images()))
    with pytest.raises(RuntimeError, match="missing"):
        fresh.load_trainable_state({k: v for k, v in state["model"].items() if "head" not in k})
    checkpointer.close()
