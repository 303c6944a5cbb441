"""Supervised contrastive loss (Khosla et al. 2020) with anchor modes and uncertain-view masking.

HNM makes two updates per iteration that differ only in which views act as anchors: "negative"
(label-0 views, pulled towards other negatives) and "positive" (label-1 views). Views of uncertain
patches (label -1) are removed from every denominator and are never anchors or positives, so a
pseudo-label we do not trust neither attracts nor repels anything.

Two batch averages (setting `finetune.supcon_average`):
- "anchors": the mean of L_i over the anchors that have at least one positive, so the loss is the
  per-anchor mean whatever the batch holds;
- "all_views": the authors' (their SupConLoss): the sum of L_i over the counted anchors divided by
  EVERY view of the batch (2N rows), an anchor-less row adding 0 but counting. Gradients point the
  same way, scaled by (counted anchors / views): with 25 curriculum positives among 511 patches
  the positive-anchor update weighs about 0.05 x what "anchors" gives it, the negative-anchor
  update about 0.8 x, so under SGD the noisy pseudo-positive update is 16 x weaker relative to the
  hard-negative one than with "anchors".
"""

from __future__ import annotations

import torch

from hnm.core.errors import ConfigError
from hnm.finetune.settings import AVERAGES

UNCERTAIN = -1
ANCHOR_LABEL = {"negative": 0, "positive": 1}
_FAR = 1.0e4


def supcon_loss(
    projections: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    temperature: float = 0.07,
    average: str = "anchors",
) -> torch.Tensor:
    """Batch average (`average`, module docstring) of
    L_i = -1/|P(i)| sum_p [l_ip - log sum_{a in A(i)} exp(l_ia)].

    projections: (M, D), one row per view (both views of a patch are separate rows with the same
    label); labels: (M,) in {0, 1, -1 = uncertain}. A(i) = every other non-uncertain view;
    P(i) = the views of A(i) with the anchor's label. An anchor with an empty P(i) adds nothing
    and is not counted ("anchors") or counts as 0 ("all_views"); with no counted anchor the loss
    is 0 (still attached to the graph, so backward works).
    Computed in float32 whatever the autocast dtype: bf16 logits / 0.07 lose too many digits.
    """
    if mode not in ANCHOR_LABEL:
        raise ConfigError(f"SupCon mode must be one of {sorted(ANCHOR_LABEL)}, got '{mode}'")
    if average not in AVERAGES:
        raise ConfigError(f"SupCon average must be one of {list(AVERAGES)}, got '{average}'")
    if projections.ndim != 2 or labels.shape != projections.shape[:1]:
        raise ValueError(
            f"projections must be (M, D) with labels (M,), got {tuple(projections.shape)} and "
            f"{tuple(labels.shape)}"
        )
    z = torch.nn.functional.normalize(projections.float(), dim=1)
    labels = labels.to(z.device)
    count = z.shape[0]
    logits = z @ z.T / temperature

    valid = labels != UNCERTAIN
    not_self = ~torch.eye(count, dtype=torch.bool, device=z.device)
    in_denominator = not_self & valid[None, :]
    positive = in_denominator & (labels[:, None] == labels[None, :])
    anchors = (labels == ANCHOR_LABEL[mode]) & valid
    positives_per_anchor = positive.sum(dim=1)
    counted = anchors & (positives_per_anchor > 0)

    # Subtract each row's max over its denominator (a constant per row: the loss is unchanged,
    # exp() cannot overflow). Detached, as it is only a numerical shift. Excluded entries are filled
    # with a large finite negative instead of -inf: shifted logits lie in [-2/T, 0], exp(-1e4) is
    # exactly 0 in float32, and a row with an empty denominator then has finite values and
    # gradients (an all -inf logsumexp would give NaN gradients even when multiplied by zero).
    excluded = ~in_denominator
    row_max = logits.masked_fill(excluded, -_FAR).max(dim=1, keepdim=True).values.detach()
    shifted = (logits - row_max).masked_fill(excluded, -_FAR)
    log_prob = shifted - torch.logsumexp(shifted, dim=1, keepdim=True)
    positive_sum = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -positive_sum / positives_per_anchor.clamp(min=1)
    # No .item()/any() here: a host sync per step would stall the GPU pipeline.
    total = torch.where(counted, per_anchor, torch.zeros_like(per_anchor)).sum()
    if average == "all_views":
        return total / count
    return total / counted.sum().clamp(min=1)
