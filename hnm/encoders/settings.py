"""Every knob of the round-0 encoder (`hnm init-encoder`), declared once (hnm.core.settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hnm.core.settings import StageSettings, setting
from hnm.encoders.inputs import CHANNEL_ORDERS, NORMALISATIONS
from hnm.encoders.simclr import PROJECTION_DIM


@dataclass(frozen=True)
class EncoderSettings(StageSettings):
    """Defaults are the demo's tiny random ResNet (config/paper.yaml: ResNet-18).

    `weights` empty means random weights from the seed, said loudly in the log: features are then
    not pretrained. `norm` applies to our own ResNets only (DSMIL/ItS2CLR weights use instance
    norm); `arch_kwargs` reaches torchvision/timm models.
    """

    section = "encoder"

    arch: str = setting(
        "resnet_mini",
        "resnet18 (paper), resnet50, resnet_mini (tiny, demo), torchvision:<name> or timm:<name>",
    )
    weights: str = setting(
        "",
        "local weights file (state dict, torchvision/timm or SimCLR checkpoint); empty: random "
        "init with the seed",
    )
    norm: str = setting(
        "batch",
        "normalisation layers of our ResNets (DSMIL/ItS2CLR weights: instance)",
        choices=("batch", "instance"),
    )
    arch_kwargs: dict[str, Any] = setting({}, "extra model options of torchvision/timm archs")
    load_head: str = setting(
        "auto",
        "load the weights file's SimCLR projection head: auto (if present and it fits), never, "
        "require",
        choices=("auto", "never", "require"),
    )
    proj_dim: int = setting(PROJECTION_DIM, "projection head output size", minimum=1)
    channel_order: str = setting(
        "auto",
        "channel order the encoder is fed: auto (the weights' own: BGR for ItS2CLR/HNM-authors "
        "SimCLR files, RGB otherwise), rgb or bgr",
        choices=("auto", *CHANNEL_ORDERS),
    )
    normalize: str = setting(
        "auto",
        "input normalisation: auto (none for DSMIL/ItS2CLR/HNM-authors SimCLR files, which were "
        "trained on [0, 1] pixels; the architecture's ImageNet mean/std otherwise), imagenet or none",
        choices=("auto", *NORMALISATIONS),
    )
