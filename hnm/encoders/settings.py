"""Every knob of the round-0 encoder (`hnm init-encoder`), declared once (hnm.core.settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hnm.core.settings import StageSettings, setting
from hnm.encoders.inputs import CHANNEL_ORDERS, NORMALISATIONS
from hnm.encoders.presets import preset_names
from hnm.encoders.simclr import PROJECTION_DIM


@dataclass(frozen=True)
class EncoderSettings(StageSettings):
    """Defaults are the demo's tiny random ResNet (config/paper.yaml: ResNet-18).

    `weights` empty means random weights from the seed, said loudly in the log: features are then
    not pretrained. `norm` applies to our own ResNets only (DSMIL/ItS2CLR weights use instance
    norm); `arch_kwargs` reaches torchvision/timm models. `preset` names a pathology foundation
    model (hnm.encoders.presets); it then fixes the architecture and input, `weights` must be its
    published file, and arch, norm and arch_kwargs are not used.
    """

    section = "encoder"

    preset: str = setting(
        "",
        "pathology foundation model (docs/foundation.md): uni, uni2_h, virchow2, h_optimus_0, "
        "prov_gigapath, or vit_tiny_test (tests); empty: the encoder named by arch",
        choices=("", *preset_names()),
    )
    allow_other_mpp: bool = setting(
        False,
        "use a preset at a tiling resolution (tile.target_mpp) other than the one it was "
        "trained at",
    )

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
