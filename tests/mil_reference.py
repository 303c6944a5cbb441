"""The per-bag MIL loop hnm trained with before batched forwards (commit f2ee052), kept as the
reference: tests check that the batched trainer gives the same losses, weights and scores, and
bench/bench_mil.py times both in one process.

One forward per bag (`model(h)`), the per-bag losses of hnm.mil.losses, one optimizer step per
pair (or bag) exactly as the trainer does.
"""

from __future__ import annotations

import numpy as np
import torch

from hnm.evaluate.metrics import binary_metrics, roc_auc
from hnm.mil.data import Cohort
from hnm.mil.losses import bag_loss, pair_loss
from hnm.mil.settings import MilSettings
from hnm.mil.train import TrainingRun


def reference_train_epoch(
    run: TrainingRun,
    cohort: Cohort,
    settings: MilSettings,
    train_pos: np.ndarray,
    train_neg: np.ndarray,
    weights: dict[int, float],
) -> float:
    """One pass, one bag per forward; the mean step loss."""
    model, optimizer = run.model, run.optimizer
    model.train()
    total = torch.zeros((), device=cohort.features.device)
    steps = 0
    if settings.ranking_loss:
        for p, n in run.order.pairs(train_pos, train_neg):
            loss = pair_loss(
                model(cohort.bag_features(p)),
                model(cohort.bag_features(n)),
                settings.w_bag,
                settings.w_instance,
                settings.w_rank,
                settings.top_k,
                settings.margin,
            )
            _step(optimizer, loss)
            total += loss.detach()
            steps += 1
    else:
        for index in run.order.bags(np.concatenate([train_pos, train_neg])):
            label = cohort.bags[index].label
            bag_logit, instance_logits = model(cohort.bag_features(index))
            loss = weights[label] * bag_loss(
                bag_logit, instance_logits, float(label), settings.w_bag, settings.w_instance
            )
            _step(optimizer, loss)
            total += loss.detach()
            steps += 1
    return float(total.item()) / max(steps, 1)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def reference_forward_bags(
    model: torch.nn.Module, cohort: Cohort, indices: np.ndarray
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(bag logits (B,), instance logits per bag), one forward per bag, in eval mode."""
    model.eval()
    outputs = [model(cohort.bag_features(int(index))) for index in indices]
    if not outputs:
        return torch.zeros(0, device=cohort.features.device), []
    return torch.stack([bag for bag, _ in outputs]), [instance for _, instance in outputs]


def reference_validate(
    model: torch.nn.Module, cohort: Cohort, val: np.ndarray, settings: MilSettings
) -> tuple[float | None, float | None, float | None]:
    """(val loss, val AUC, val F1 at 0.5), one forward per bag."""
    if len(val) == 0:
        return None, None, None
    bag_logits, instance_logits = reference_forward_bags(model, cohort, val)
    labels = torch.tensor([float(cohort.bags[i].label) for i in val], device=bag_logits.device)
    max_instance = torch.stack([logits.max() for logits in instance_logits])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = settings.w_bag * bce(bag_logits, labels)
    loss = loss + settings.w_instance * bce(max_instance, labels)
    probs = torch.sigmoid(bag_logits).cpu().numpy()
    y = labels.cpu().numpy()
    f1 = binary_metrics(y, probs >= 0.5)["f1"] if y.any() else None
    return float(loss.item()), roc_auc(y, probs), f1
