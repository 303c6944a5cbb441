"""The encoder's learning rate as a pure function of the global encoder epoch, so a resumed or
re-run round (fine-tuning) or a resumed pretraining lands on the rate an uninterrupted run used.

Two schedules (finetune.lr_schedule): hnm's `smooth` cosine, evaluated at fractional epochs, and
the authors' `stepped` one (docs/method.md, "Learning rate").
"""

from __future__ import annotations

import math

from hnm.core.errors import ConfigError

LR_SCHEDULES = ("smooth", "stepped")


def stepped_learning_rate(
    epoch: int, base_lr: float, cosine_after: int = 10, total_epochs: int = 100
) -> float:
    """The authors' rate (lr_schedule: stepped): CosineAnnealingLR(T_max = total_epochs,
    eta_min = 0) stepped once at the end of every epoch from `cosine_after` on.

    Epoch e has seen max(0, e - cosine_after) steps, so the rate is constant within an epoch and
    never reaches 0: 90 steps of a 100-step cosine leave 2.96e-4 at the last epoch for lr 0.01.
    """
    if base_lr < 0:
        raise ConfigError(f"lr must be >= 0, got {base_lr}")
    steps = max(0, int(epoch) - cosine_after)
    return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * steps / total_epochs)))


def learning_rate(
    epoch: float, base_lr: float, cosine_after: int = 10, total_epochs: int = 100
) -> float:
    """Constant `base_lr` before `cosine_after`, then cosine decay reaching 0 at `total_epochs`.

    `epoch` may be fractional (epoch + step / steps) so the decay is smooth within an epoch; it is
    clamped at `total_epochs`, so extra epochs train at the final (zero) rate instead of the
    cosine rising again.
    """
    if base_lr < 0:
        raise ConfigError(f"lr must be >= 0, got {base_lr}")
    if epoch < cosine_after or total_epochs <= cosine_after:
        return float(base_lr)
    progress = min(1.0, (epoch - cosine_after) / (total_epochs - cosine_after))
    return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * progress)))
