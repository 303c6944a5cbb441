"""MIL aggregators and their training: DSMIL (the paper's) and gated-attention ABMIL (comparison).

Every aggregator maps one bag of patch features h (N, d) to (bag logit (), instance logits (N,))
with `forward`, and a BagBatch of B bags (hnm.mil.batch) to (bag logits (B,), instance logits
(B, Lmax) with -inf on padding) with `forward_batch`, which training and scoring use; so losses,
training and scoring never need to know which one they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is heavy; importing hnm.mil alone must stay cheap
    import torch

AGGREGATORS = ("dsmil", "abmil")


def build_aggregator(name: str, feature_dim: int) -> "torch.nn.Module":
    """A fresh aggregator; parameters come from torch's current RNG (seed it first)."""
    from hnm.core.errors import ConfigError

    if name == "dsmil":
        from hnm.mil.dsmil import DSMIL

        return DSMIL(feature_dim)
    if name == "abmil":
        from hnm.mil.abmil import GatedABMIL

        return GatedABMIL(feature_dim)
    raise ConfigError(f"unknown MIL aggregator '{name}'; use one of {', '.join(AGGREGATORS)}")
