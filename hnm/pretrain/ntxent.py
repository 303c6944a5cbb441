"""The NT-Xent loss of SimCLR (Chen et al. 2020): each view must pick out its partner view.

A batch of N patches gives 2N views; view i's positive is the other view of the same patch and its
negatives are the other 2N - 2 views. Unlike SupCon (hnm.finetune.supcon) no label is involved:
pretraining runs before any pseudo-label exists, so every patch is its own class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def partner_index(count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Row of each view's partner when rows 0..N-1 are view 1 and rows N..2N-1 view 2."""
    half = count // 2
    return (torch.arange(count, device=device) + half) % count


def nt_xent_loss(projections: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean over all 2N views of -log( exp(s_ip / T) / sum_{a != i} exp(s_ia / T) ).

    projections: (2N, D), view 1 of every patch then view 2 in the same order (as
    hnm.contrastive.batches.make_views stacks them); s is the cosine similarity. Computed in float32
    whatever the autocast dtype: bf16 similarities divided by a small temperature lose too many
    digits for the softmax.
    """
    count = projections.shape[0]
    if projections.ndim != 2 or count < 2 or count % 2:
        raise ValueError(f"projections must be (2N, D) with N >= 1, got {tuple(projections.shape)}")
    z = F.normalize(projections.float(), dim=1)
    logits = z @ z.T / temperature
    # A view is never its own negative: its entry is removed from the softmax (exp(-inf) = 0, and
    # every row keeps finite entries, so neither the loss nor its gradient becomes NaN).
    self_mask = torch.eye(count, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, partner_index(count, z.device))
