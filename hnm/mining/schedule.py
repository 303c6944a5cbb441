"""The encoder schedule as pure functions of the GLOBAL encoder epoch.

Rounds are separate jobs (one Snakemake job per round), so the only state a round needs to continue
the schedule is the global epoch counter stored in the encoder file: the curriculum ratio r(t) and
the learning rate are derived from it, never accumulated, so a resumed or re-run round lands on
exactly the values an uninterrupted schedule would have used.
"""

from __future__ import annotations

import math

from hnm.core.errors import ConfigError


def curriculum_ratio(
    epoch: float, r0: float = 0.2, r_final: float = 0.8, warmup: int = 5, total_epochs: int = 100
) -> float:
    """r(t): the fraction of pseudo-positives used as curriculum positives at global epoch t.

    r0 during warm-up, then linear to r_final at t = total_epochs (docs/method.md), held at r_final
    after it (a schedule extended past E should not extrapolate beyond the chosen end value).
    """
    for name, value in (("r0", r0), ("rT", r_final)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")
    if epoch < warmup:
        return float(r0)
    if total_epochs <= warmup:  # no ramp left: the end value applies from warm-up on
        return float(r_final)
    progress = min(1.0, (epoch - warmup) / (total_epochs - warmup))
    return float(r0 + progress * (r_final - r0))


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
