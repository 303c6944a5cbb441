"""What a fine-tuning round trains: the whole encoder, or LoRA adapters on a frozen backbone.

finetune.adapter lora (docs/foundation.md) adds adapters to round 0's foundation-model encoder
and freezes its backbone; every later round continues the same adapters, so their configuration
must not change between rounds (a different rank would be a different model, not a continuation).
"""

from __future__ import annotations

import logging

import torch

from hnm.core.errors import ConfigError
from hnm.encoders.foundation import add_adapters
from hnm.encoders.lora import LoraConfig
from hnm.encoders.simclr import SimCLRModel
from hnm.finetune.settings import FinetuneSettings

log = logging.getLogger("hnm.finetune.train")


def lora_config(settings: FinetuneSettings) -> LoraConfig:
    return LoraConfig(
        rank=settings.lora_rank,
        alpha=settings.lora_alpha,
        targets=tuple(settings.lora_targets),
        last_blocks=settings.lora_last_blocks,
    )


def prepare_training(
    model: SimCLRModel, settings: FinetuneSettings, encoder_in: str, device: torch.device
) -> None:
    """Give `model` the adapters the settings ask for (or check the ones it has), and switch on
    gradient checkpointing where asked; the parameters left trainable are what the round trains."""
    wanted = lora_config(settings) if settings.adapter == "lora" else None
    have = model.adapters.config if model.adapters is not None else None
    if wanted is not None and have is None:
        add_adapters(model, wanted, settings.seed)
        model.to(device)
    elif wanted != have:
        raise ConfigError(
            f"encoder {encoder_in} was fine-tuned with "
            f"{'adapters ' + str(have.as_dict()) if have else 'no adapters'}, but the finetune "
            f"settings ask for {'adapters ' + str(wanted.as_dict()) if wanted else 'none'} "
            "(finetune.adapter and lora_*); the rounds must train the same thing, so keep the "
            "settings of the earlier rounds or start again from round 0"
        )
    if model.adapters is None and model.base is not None:
        model.backbone_changed = True
        log.warning(
            "finetune.adapter none on the foundation model %s: every one of its %d parameters "
            "trains, and each round's encoder file holds a full copy; finetune.adapter lora "
            "trains low-rank adapters instead (docs/foundation.md)",
            model.spec.preset,
            sum(p.numel() for p in model.backbone.parameters()),
        )
    if settings.gradient_checkpointing:
        if hasattr(model.backbone, "gradient_checkpointing"):
            model.backbone.gradient_checkpointing = True
        else:
            log.warning(
                "finetune.gradient_checkpointing: %s has no transformer blocks to checkpoint; "
                "training without it",
                model.spec.arch,
            )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("training %d of the encoder's %d parameters", trainable, total)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates: all of them unless frozen (under adapters)."""
    return [p for p in model.parameters() if p.requires_grad]
