"""MIL training losses (docs/method.md, "MIL aggregator: DSMIL").

All losses take raw logits. The ranking loss is the paper's contribution to MIL training: the
mean of a positive bag's top-K instance logits must exceed the negative bag's by a margin, which
pushes tumour patches above the hardest normal patches instead of only above 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from hnm.mil.batch import masked_max, masked_top_k_mean


class MilLossWeights(Protocol):
    """The loss fields of MilSettings (a Protocol, so losses need not import the settings)."""

    w_bag: float
    w_instance: float
    w_rank: float
    top_k: int
    margin: float


def bce(logit: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of one logit against a 0/1 target (numerically stable form)."""
    return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, float(target)))


def top_k_mean(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest logits; k is capped at the bag size (the authors' code crashed)."""
    return torch.topk(logits, min(k, logits.numel())).values.mean()


def ranking_loss(
    positive_logits: torch.Tensor, negative_logits: torch.Tensor, k: int, margin: float
) -> torch.Tensor:
    """max(0, margin - mean(topK(s_pos)) + mean(topK(s_neg))) on raw instance logits."""
    gap = top_k_mean(positive_logits, k) - top_k_mean(negative_logits, k)
    return torch.clamp(margin - gap, min=0.0)


def bag_loss(
    bag_logit: torch.Tensor,
    instance_logits: torch.Tensor,
    label: float,
    w_bag: float = 0.5,
    w_instance: float = 0.5,
) -> torch.Tensor:
    """One bag without pairing: w_bag * BCE(bag) + w_instance * BCE(max instance)."""
    return w_bag * bce(bag_logit, label) + w_instance * bce(instance_logits.max(), label)


def pair_loss(
    positive: tuple[torch.Tensor, torch.Tensor],
    negative: tuple[torch.Tensor, torch.Tensor],
    w_bag: float,
    w_instance: float,
    w_rank: float,
    k: int,
    margin: float,
) -> torch.Tensor:
    """One (positive, negative) bag pair, each given as (bag logit, instance logits).

    L = w_b [BCE(bag_p,1) + BCE(bag_n,0)]/2 + w_i [BCE(max s_p,1) + BCE(max s_n,0)]/2 + w_r L_rank.
    """
    (bag_p, inst_p), (bag_n, inst_n) = positive, negative
    loss = w_bag * (bce(bag_p, 1.0) + bce(bag_n, 0.0)) / 2
    loss = loss + w_instance * (bce(inst_p.max(), 1.0) + bce(inst_n.max(), 0.0)) / 2
    if w_rank:
        loss = loss + w_rank * ranking_loss(inst_p, inst_n, k, margin)
    return loss


def batch_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) BCE of each logit against its 0/1 target."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def pair_loss_batch(
    bag_logits: torch.Tensor,
    instance_logits: torch.Tensor,
    lengths: Sequence[int],
    targets: torch.Tensor,
    settings: MilLossWeights,
) -> torch.Tensor:
    """`pair_loss` of a batch of 2 bags (positive first): bag logits (2,), instance logits
    (2, Lmax) with -inf padding, targets the tensor [1, 0] made once per run (not per step)."""
    loss = settings.w_bag * batch_bce(bag_logits, targets).mean()
    loss = loss + settings.w_instance * batch_bce(masked_max(instance_logits), targets).mean()
    if settings.w_rank:
        top = masked_top_k_mean(instance_logits, lengths, settings.top_k)
        loss = loss + settings.w_rank * torch.clamp(settings.margin - (top[0] - top[1]), min=0.0)
    return loss


def bag_loss_batch(
    bag_logits: torch.Tensor,
    instance_logits: torch.Tensor,
    targets: torch.Tensor,
    settings: MilLossWeights,
) -> torch.Tensor:
    """(B,) `bag_loss` of each bag of a batch (instance logits padded with -inf)."""
    return settings.w_bag * batch_bce(bag_logits, targets) + settings.w_instance * batch_bce(
        masked_max(instance_logits), targets
    )
