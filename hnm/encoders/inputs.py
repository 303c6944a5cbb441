"""What an encoder is fed: channel order and normalisation, recorded in the encoder file.

Weights only work on the inputs they were trained on. torchvision/timm ImageNet weights expect RGB
normalised by the ImageNet mean and std. DSMIL's SimCLR code reads patches with PIL (RGB) and feeds
them as ToTensor() gives them, in [0, 1] without mean/std; ItS2CLR's and the HNM authors' code read
them with cv2.imread (BGR) and feed them the same unnormalised way. The encoder file carries the
choice (`channel_order`, `mean`, `std`), and extraction, fine-tuning, pretraining and predict all
apply it, so a round never changes what its encoder sees.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from hnm.core.errors import ConfigError
from hnm.encoders.registry import EncoderSpec

CHANNEL_ORDERS = ("rgb", "bgr")
NORMALISATIONS = ("imagenet", "none")
UNNORMALISED = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

# The input each known weight layout (hnm.encoders.weights.split_checkpoint) was trained on.
LAYOUT_INPUTS: dict[str, tuple[str, str]] = {
    "dsmil-simclr": ("rgb", "none"),
    "its2clr-simclr": ("bgr", "none"),
}
DEFAULT_INPUT = ("rgb", "imagenet")


def resolve_input(
    spec: EncoderSpec, layout: str | None, channel_order: str, normalize: str
) -> EncoderSpec:
    """`spec` with the input chosen by the settings; "auto" takes the weight layout's
    (LAYOUT_INPUTS; random or unknown weights: RGB with the architecture's mean/std).

    mean/std are stored per INPUT channel, so BGR with ImageNet normalisation reverses them.
    """
    auto_order, auto_norm = LAYOUT_INPUTS.get(layout or "", DEFAULT_INPUT)
    order = auto_order if channel_order == "auto" else channel_order
    norm = auto_norm if normalize == "auto" else normalize
    if norm == "none":
        mean, std = UNNORMALISED
    else:
        mean, std = spec.mean, spec.std
        if order != spec.channel_order:
            mean, std = tuple(reversed(mean)), tuple(reversed(std))
    return replace(spec, channel_order=order, mean=tuple(mean), std=tuple(std))


def to_channel_order(rgb: torch.Tensor, order: str, dim: int) -> torch.Tensor:
    """RGB images (channels along `dim`) in the encoder's channel order."""
    return rgb.flip(dim) if order == "bgr" else rgb


# Our ResNets halve the resolution five times (stem conv, max-pool, three strided stages).
RESNET_STRIDE = 32


def check_patch_size(arch: str, arch_kwargs: dict[str, Any], patch_size: int) -> None:
    """Refuse InstanceNorm on patches that leave the last stage 1 x 1, before any work: torch
    fails there (statistics over one element) with an error that names neither setting."""
    if arch_kwargs.get("norm") != "instance":
        return
    side = math.ceil(patch_size / RESNET_STRIDE)
    if side < 2:
        raise ConfigError(
            f"encoder.norm instance needs a feature map of at least 2 x 2 in the last stage of "
            f"{arch}, but {patch_size} px patches give {side} x {side}; use tile.patch_size >= "
            f"{RESNET_STRIDE + 1} (the paper: 224) or encoder.norm batch"
        )


def check_preset_resolution(meta: Any, tiles_attrs: dict[str, Any], tiles_path: object) -> None:
    """Refuse to extract a foundation model's features from patches at a resolution it was not
    trained at (encoder.allow_other_mpp in its encoder file allows it)."""
    from hnm.encoders.presets import resolution_advice, resolution_mismatch

    target = float(tiles_attrs.get("target_mpp", float("nan")))
    if not meta.preset or target != target:  # not a preset, or a tiles file without it
        return
    text = resolution_mismatch(meta.preset, tuple(meta.mpp), target)
    if text and not meta.allow_other_mpp:
        raise ConfigError(f"{text} in {tiles_path}{resolution_advice(tuple(meta.mpp))}")
