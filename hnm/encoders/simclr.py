"""Backbone + SimCLR projection head, the unit that fine-tuning trains and extraction reads.

docs/method.md: the head is Linear(d, d)-ReLU-Linear(d, 256); SupCon works on the head's output while
MIL features come from the backbone alone, so extraction never runs the head.

A foundation-model backbone (encoder.preset) may carry low-rank adapters (hnm.encoders.lora):
then the backbone is frozen, `adapters` holds what trains besides the head, and `base` names the
published weights file the backbone came from (the encoder file refers to it instead of copying).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hnm.encoders.registry import EncoderSpec, build_backbone

PROJECTION_DIM = 256


class SimCLRModel(nn.Module):
    def __init__(
        self, backbone: nn.Module, spec: EncoderSpec, proj_dim: int = PROJECTION_DIM
    ) -> None:
        super().__init__()
        d = spec.feature_dim
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))
        self.spec = spec
        # Set by hnm.encoders.model_file / hnm.encoders.foundation for preset backbones:
        self.base: Any = None  # hnm.encoders.base_weights.BaseWeights
        self.adapters: nn.Module | None = None  # hnm.encoders.lora.LoraAdapters
        # False while the backbone is exactly the base file's (the encoder file then names it).
        self.backbone_changed = False

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    @property
    def proj_dim(self) -> int:
        return int(self.head[2].out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, d): what MIL consumes."""
        return self.backbone(x)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections (B, proj_dim), not normalised: the loss decides on normalisation."""
        return self.head(self.backbone(x))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a resumable checkpoint must hold: everything, or under adapters only the head
        and the adapters (the frozen backbone is gigabytes that never change)."""
        state = self.state_dict()
        if self.adapters is None:
            return state
        return {k: v for k, v in state.items() if not k.startswith("backbone.")}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of trainable_state; any key missing or extra is an error."""
        if self.adapters is None:
            self.load_state_dict(state)
            return
        expected = set(self.trainable_state())
        if set(state) != expected:
            raise RuntimeError(
                f"checkpoint keys differ from the model's trainable ones: missing "
                f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
            )
        self.load_state_dict(state, strict=False)


def build_encoder(
    arch: str,
    arch_kwargs: dict | None = None,
    seed: int = 0,
    proj_dim: int = PROJECTION_DIM,
) -> SimCLRModel:
    """A randomly initialised encoder; the seed alone fixes every weight (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone, spec = build_backbone(arch, arch_kwargs)
        model = SimCLRModel(backbone, spec, proj_dim)
    return model
