"""Low-rank adapters (LoRA) on a frozen backbone's linear layers, written for hnm (no `peft`).

An adapted layer computes W x + b + (alpha / r) * B (A x): A (r x in) starts random, B (out x r)
starts at zero, so a freshly adapted model equals the frozen one, and training moves only A, B
(and the projection head) while W stays the published weight. The update is the closed form
W' = W + (alpha / r) B A, of rank at most r.

The adapters live beside the backbone, not inside it: each is a forward hook on its layer, so the
backbone's state dict keeps the published key layout (its weights are named, not stored, in the
encoder file) and the adapters' own state is a few megabytes. Which layers: the attention
projections by default (`qkv`, `proj`; the MLP's `fc1`, `fc2` may be added) of every block, or of
the last `last_blocks` blocks only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hnm.core.errors import ConfigError
from hnm.encoders.presets import LORA_TARGETS

# Where each layer an adapter may sit on is inside a ViT block.
TARGETS = dict(zip(LORA_TARGETS, ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")))


@dataclass(frozen=True)
class LoraConfig:
    """Rank r, scale alpha (the update is multiplied by alpha / r), layers, blocks (0: all)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("qkv", "proj")
    last_blocks: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise ConfigError(
                f"finetune.lora_targets {list(self.targets)}: give one or more of "
                f"{', '.join(TARGETS)} ({', '.join(unknown) or 'none given'} not known)"
            )
        if self.rank < 1 or self.alpha <= 0 or self.last_blocks < 0:
            raise ConfigError(
                f"LoRA rank {self.rank} must be >= 1, alpha {self.alpha} > 0, last_blocks "
                f"{self.last_blocks} >= 0"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "last_blocks": self.last_blocks,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "LoraConfig":
        return cls(
            int(raw["rank"]), float(raw["alpha"]), tuple(raw["targets"]), int(raw["last_blocks"])
        )


class LowRank(nn.Module):
    """The pair (A, B) of one layer: `down` is A (r x in), `up` is B (out x r)."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # as nn.Linear's weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.down), self.up)


def target_layers(backbone: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the backbone's linear layers that get an adapter, in block order."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ConfigError(
            f"LoRA adapters (finetune.adapter lora) need a transformer encoder with blocks "
            f"(encoder.preset); {type(backbone).__name__} has none: use finetune.adapter none"
        )
    depth = len(blocks)
    if config.last_blocks > depth:
        raise ConfigError(
            f"finetune.lora_last_blocks {config.last_blocks} exceeds the encoder's {depth} blocks"
        )
    first = depth - config.last_blocks if config.last_blocks else 0
    return [
        f"blocks.{index}.{TARGETS[target]}"
        for index in range(first, depth)
        for target in config.targets
    ]


class LoraAdapters(nn.Module):
    """Every adapter of one backbone, keyed by its layer's name ('.' written as '-')."""

    def __init__(self, backbone: nn.Module, config: LoraConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in target_layers(backbone, config):
                linear = backbone.get_submodule(name)
                if not isinstance(linear, nn.Linear):
                    raise ConfigError(
                        f"LoRA target {name} is a {type(linear).__name__}, not Linear"
                    )
                self.layers[name.replace(".", "-")] = LowRank(
                    linear.in_features, linear.out_features, config.rank
                )
        self._handles: list[Any] = []
        self.attach(backbone)

    def attach(self, backbone: nn.Module) -> None:
        """Hook every adapter onto its layer of `backbone` (once)."""
        self.detach()
        scale = self.config.scale
        for key, low_rank in self.layers.items():
            layer = backbone.get_submodule(key.replace("-", "."))

            def hook(
                module: nn.Module,
                args: tuple[torch.Tensor, ...],
                output: torch.Tensor,
                low_rank: LowRank = low_rank,
            ) -> torch.Tensor:
                return output + scale * low_rank(args[0])

            self._handles.append(layer.register_forward_hook(hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def freeze(module: nn.Module) -> None:
    """No gradient for any parameter of `module` (the backbone under adapters)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
