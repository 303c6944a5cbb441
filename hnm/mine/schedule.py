"""The curriculum schedule as pure functions of the GLOBAL encoder epoch (the learning rate's
schedule, which pretraining shares, is hnm.contrastive.lr).

Rounds are separate jobs (one Snakemake job per round), so the only state a round needs to continue
the schedule is the global epoch counter stored in the encoder file: the curriculum ratio r(t) is
derived from it, never accumulated, so a resumed or re-run round lands on
exactly the values an uninterrupted schedule would have used.
"""

from __future__ import annotations

from hnm.core.errors import ConfigError


def curriculum_ratio(
    epoch: float, r0: float = 0.2, r_final: float = 0.8, warmup: int = 5, total_epochs: int = 100
) -> float:
    """r(t): the fraction of pseudo-positives used as curriculum positives at global epoch t.

    r0 during warm-up, then linear to r_final at t = total_epochs (docs/method.md), held at r_final
    after it (a schedule extended past E should not extrapolate beyond the chosen end value).
    """
    for name, value in (("r0", r0), ("r_final", r_final)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")
    if epoch < warmup:
        return float(r0)
    if total_epochs <= warmup:  # no ramp left: the end value applies from warm-up on
        return float(r_final)
    progress = min(1.0, (epoch - warmup) / (total_epochs - warmup))
    return float(r0 + progress * (r_final - r0))


def lagged_ratio(
    epoch: int, start: float, r_final: float, warmup: int, total_epochs: int, before: float
) -> float:
    """The authors' self-paced ratio for global epoch `epoch` (curriculum_update: epoch).

    Their trainer recomputes the ratio at the END of each epoch t >= warmup as
    start + (t - warmup) * (r_final - start) / (total_epochs - warmup), and the next epoch uses it:
    epoch e trains with the value of t = e - 1, and with `before` (the loader's initial ratio:
    r0 for the curriculum, 0 for the confident negatives) while e - 1 < warmup.
    """
    t = epoch - 1
    if t < warmup:
        return float(before)
    if total_epochs <= warmup:
        return float(r_final)
    return float(start + (t - warmup) * (r_final - start) / (total_epochs - warmup))
