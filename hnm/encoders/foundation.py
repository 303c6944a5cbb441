"""Round 0's encoder from a foundation-model preset, and the adapters the rounds train on it.

`build_preset_encoder` makes what `hnm init-encoder` writes for `encoder.preset`: the preset's
network holding its published weights (named by path and hash in the encoder file, not copied),
fed the preset's input, with a seeded projection head. `add_adapters` is how fine-tuning turns it
into a LoRA-adapted model: the backbone frozen, adapters added (their up-projection at zero, so
the model starts exactly where the frozen one is).
"""

from __future__ import annotations

import logging

import torch

from hnm.core.errors import ConfigError
from hnm.encoders.base_weights import build_vit, load_base_backbone
from hnm.encoders.lora import LoraAdapters, LoraConfig, freeze
from hnm.encoders.presets import Preset, get_preset, weights_hint
from hnm.encoders.registry import EncoderSpec
from hnm.encoders.simclr import SimCLRModel

log = logging.getLogger(__name__)


def preset_spec(preset: Preset, allow_other_mpp: bool = False) -> EncoderSpec:
    """How to build and feed `preset`: its ViT sizes, input and output width."""
    return EncoderSpec(
        arch="vit",
        arch_kwargs=dict(preset.vit),
        feature_dim=preset.feature_dim,
        mean=preset.mean,
        std=preset.std,
        channel_order=preset.channel_order,
        patch_size=preset.img_size,
        fixed_input=not preset.dynamic_img_size,
        classifier_prefixes=("head.",),
        preset=preset.name,
        mpp=preset.mpp,
        allow_other_mpp=allow_other_mpp,
    )


def build_preset_encoder(
    name: str | Preset,
    weights: str,
    seed: int,
    proj_dim: int,
    allow_other_mpp: bool = False,
) -> SimCLRModel:
    """The preset's encoder: published weights from `weights`, or (test preset only) random
    ones from `seed`; the projection head is random from `seed` either way."""
    preset = get_preset(name) if isinstance(name, str) else name
    base = None
    if weights:
        backbone, base = load_base_backbone(
            weights, preset.vit, preset.name, hint=weights_hint(preset)
        )
    elif preset.needs_weights:
        raise ConfigError(
            f"encoder.preset {preset.name} needs its published weights in encoder.weights: "
            f"{weights_hint(preset)}"
        )
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = build_vit(preset.vit)
        log.warning(
            "encoder.preset %s: no weights given, the ViT is RANDOMLY INITIALISED with seed %d",
            preset.name,
            seed,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SimCLRModel(backbone, preset_spec(preset, allow_other_mpp), proj_dim)
    model.base = base
    model.backbone_changed = base is None  # random weights live in the encoder file itself
    return model


def add_adapters(model: SimCLRModel, config: LoraConfig, seed: int) -> None:
    """Freeze `model`'s backbone and give it LoRA adapters (seeded; the update starts at zero)."""
    if model.adapters is not None:
        raise ConfigError("the encoder already has adapters")
    model.adapters = LoraAdapters(model.backbone, config, seed)
    freeze(model.backbone)
    log.info(
        "LoRA adapters: rank %d, alpha %g, on %s of %s blocks: %d parameters (backbone frozen: %d)",
        config.rank,
        config.alpha,
        "+".join(config.targets),
        f"the last {config.last_blocks}" if config.last_blocks else "all",
        model.adapters.parameter_count(),
        sum(p.numel() for p in model.backbone.parameters()),
    )
