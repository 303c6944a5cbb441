"""Backbone + SimCLR projection head, the unit that fine-tuning trains and extraction reads.

docs/method.md: the head is Linear(d, d)-ReLU-Linear(d, 256); SupCon works on the head's output while
MIL features come from the backbone alone, so extraction never runs the head.
"""

from __future__ import annotations

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
