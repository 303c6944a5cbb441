"""MIL training losses (docs/method.md, "MIL aggregator: DSMIL").

All losses take raw logits. The ranking loss is the paper's contribution to MIL training: the
mean of a positive bag's top-K instance logits must exceed the negative bag's by a margin, which
pushes tumour patches above the hardest normal patches instead of only above 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
