"""MIL aggregators and their training: DSMIL (the paper's) and gated-attention ABMIL (comparison).

DSMIL comes in two variants of its bag branch (`mil.dsmil`, hnm.mil.dsmil): `fast` (the default)
and `reference` (the authors' layout, which config/paper.yaml uses).

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
DSMIL_VARIANTS = ("fast", "reference")


def build_aggregator(name: str, feature_dim: int, dsmil: str = "fast") -> "torch.nn.Module":
    """A fresh aggregator; parameters come from torch's current RNG (seed it first). `dsmil` is
    the DSMIL variant (ignored by other aggregators)."""
    from hnm.core.errors import ConfigError

    if name == "dsmil":
        if dsmil == "reference":
            from hnm.mil.dsmil_reference import ReferenceDSMIL

            return ReferenceDSMIL(feature_dim)
        if dsmil == "fast":
            from hnm.mil.dsmil import DSMIL

            return DSMIL(feature_dim)
        raise ConfigError(
            f"unknown DSMIL variant '{dsmil}'; use one of {', '.join(DSMIL_VARIANTS)}"
        )
    if name == "abmil":
        from hnm.mil.abmil import GatedABMIL

        return GatedABMIL(feature_dim)
    raise ConfigError(f"unknown MIL aggregator '{name}'; use one of {', '.join(AGGREGATORS)}")
