"""Encoders by name, and what each needs from its input.

An encoder's definition includes its input convention (RGB order, mean/std, nominal patch size), so
the file that carries its weights also carries how to feed it; nobody re-derives normalisation in a
second place. Our own ResNets need no extra package; `torchvision:<name>` and `timm:<name>` build
those libraries' models when they are installed (imported only then). `vit` is our own Vision
Transformer in timm's parameter names (hnm.encoders.vit), which the foundation-model presets
(hnm.encoders.presets) build with their published sizes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hnm.core.errors import ConfigError
from hnm.encoders import resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build a backbone and feed it: uint8 patches in `channel_order` -> (x/255 - mean) / std
    (mean and std per input channel; hnm.encoders.inputs chooses them for a weights file)."""

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_dim: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "rgb"
    patch_size: int = 224
    # Convolutional nets with adaptive pooling take any patch size; ViTs do not.
    fixed_input: bool = False
    # Key prefixes of the ImageNet classifier that weight files carry and a backbone drops.
    classifier_prefixes: tuple[str, ...] = ("fc.",)
    # Foundation-model presets (hnm.encoders.presets): the name, the resolutions (um/px) it was
    # trained at, and whether tiling at another one was allowed (encoder.allow_other_mpp).
    preset: str = ""
    mpp: tuple[float, ...] = ()
    allow_other_mpp: bool = False


_OWN = {
    "resnet18": (resnet.resnet18, 512),
    "resnet50": (resnet.resnet50, 2048),
    "resnet_mini": (resnet.resnet_mini, 128),
}


def known_archs() -> list[str]:
    return sorted(_OWN) + ["vit", "torchvision:<name>", "timm:<name>"]


def build_backbone(
    arch: str, arch_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, EncoderSpec]:
    """A randomly initialised backbone (seed the RNG before calling) and its spec."""
    kwargs = dict(arch_kwargs or {})
    if arch in _OWN:
        factory, dim = _OWN[arch]
        unknown = set(kwargs) - {"norm"}
        if unknown:
            raise ConfigError(
                f"encoder '{arch}' takes only 'norm' as an option, not {sorted(unknown)}"
            )
        try:
            model = factory(**kwargs)
        except ValueError as error:
            raise ConfigError(f"encoder '{arch}': {error}") from error
        return model, EncoderSpec(arch=arch, arch_kwargs=kwargs, feature_dim=dim)
    if arch == "vit":
        return _vit(kwargs)
    if arch.startswith("torchvision:"):
        return _torchvision(arch, kwargs)
    if arch.startswith("timm:"):
        return _timm(arch, kwargs)
    raise ConfigError(f"unknown encoder '{arch}'; choose one of {', '.join(known_archs())}")


def _vit(kwargs: dict[str, Any]) -> tuple[nn.Module, EncoderSpec]:
    """Our ViT from its full set of sizes (an encoder file records them; presets give them)."""
    from hnm.encoders.vit import VisionTransformer

    try:
        model = VisionTransformer(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"encoder 'vit' {kwargs}: {error}") from error
    return model, EncoderSpec(
        arch="vit",
        arch_kwargs=kwargs,
        feature_dim=model.feature_dim,
        patch_size=model.img_size,
        fixed_input=not model.dynamic_img_size,
        classifier_prefixes=("head.",),
    )


def _optional(module: str, arch: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"encoder '{arch}' needs the '{module}' package, which is not installed here; "
            f"install it (pip install {module}) or use one of {', '.join(sorted(_OWN))}"
        ) from error


def _torchvision(arch: str, kwargs: dict[str, Any]) -> tuple[nn.Module, EncoderSpec]:
    models = _optional("torchvision", arch).models
    name = arch.split(":", 1)[1]
    try:
        model = models.get_model(name, weights=None, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"torchvision cannot build '{name}': {error}") from error
    # Replace the classifier by identity so the model returns pooled features.
    for attribute in ("fc", "classifier", "heads", "head"):
        classifier = getattr(model, attribute, None)
        if classifier is None:
            continue
        dim = _in_features(classifier)
        setattr(model, attribute, nn.Identity())
        return model, EncoderSpec(
            arch=arch,
            arch_kwargs=kwargs,
            feature_dim=dim,
            fixed_input=name.startswith(("vit", "swin", "maxvit")),
            classifier_prefixes=(f"{attribute}.",),
        )
    raise ConfigError(
        f"torchvision model '{name}' has no classifier attribute we know how to remove"
    )


def _in_features(classifier: nn.Module) -> int:
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"cannot tell the feature size of classifier {classifier}")
    return linears[0].in_features


def _timm(arch: str, kwargs: dict[str, Any]) -> tuple[nn.Module, EncoderSpec]:
    timm = _optional("timm", arch)
    name = arch.split(":", 1)[1]
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(f"timm cannot build '{name}': {error}") from error
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifier = cfg.get("classifier", "head")
    prefixes = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    input_size = cfg.get("input_size", (3, 224, 224))
    return model, EncoderSpec(
        arch=arch,
        arch_kwargs=kwargs,
        feature_dim=int(model.num_features),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        patch_size=int(input_size[-1]),
        fixed_input=not name.startswith(
            ("resnet", "resnext", "convnext", "efficientnet", "densenet")
        ),
        classifier_prefixes=prefixes,
    )
