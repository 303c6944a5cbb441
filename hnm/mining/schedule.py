"""The encoder schedule as pure functions of the GLOBAL encoder epoch.

Rounds are separate jobs (one Snakemake job per round), so the only state a round needs to continue
the schedule is the global epoch counter stored in the encoder file: the curriculum ratio r(t) and
the learning rate are derived from it, never accumulated, so a resumed or re-run round lands on
exactly the values an uninterrupted schedule would have used.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from hnm.core.errors import ConfigError
from hnm.core.settings import StageSettings, setting


@dataclass(frozen=True)
class EncoderSchedule(StageSettings):
    """The global epoch schedule of the encoder, shared by mining (the curriculum r(t)) and
    fine-tuning (learning rate, positive-anchor update); part of the `finetune` config section.

    Declared here, apart from the rest of the fine-tuning settings, so that `hnm mine` takes the
    same flags, defaults and bounds without importing torch. `rounds` is the workflow's number of
    hard-negative rounds (a job-level value, not a finetune key), and `total_epochs` the one place
    where the length of the whole schedule is computed.
    """

    section = "finetune"

    epochs_per_round: int = setting(
        2, "fine-tuning epochs between pseudo-label refreshes (paper: 5)", minimum=1
    )
    warmup: int = setting(
        1,
        "global epoch from which the positive-anchor update runs and r(t) grows (paper: 5)",
        minimum=0,
    )
    refresh_offset: int = setting(
        0,
        "epochs round 0 trains beyond epochs_per_round, taken from the last round (the authors' "
        "trainer refreshes the pseudo-labels after epochs 6, 11, ..., 96 of 100: 1)",
        minimum=0,
    )
    rounds: int = 2

    def check(self) -> list[str]:
        problems = []
        if self.rounds < 0:
            problems.append(
                f"rounds must be at least 0 (got {self.rounds}); set the workflow's rounds"
            )
        if self.refresh_offset >= self.epochs_per_round:
            problems.append(
                f"refresh_offset ({self.refresh_offset}) must be smaller than epochs_per_round "
                f"({self.epochs_per_round}): the last round would train no epoch"
            )
        return problems

    @property
    def total_epochs(self) -> int:
        """Encoder epochs of the whole schedule: the cosine and the curriculum end there. With no
        rounds (plain DSMIL) one round's length keeps the schedule well defined."""
        return self.epochs_per_round * max(self.rounds, 1)

    def round_start(self, round_index: int) -> int:
        """The global epoch at which fine-tuning from round `round_index`'s encoder starts, i.e.
        how many epochs encoder_r has completed: r * epochs_per_round + refresh_offset, 0 for
        round 0 and total_epochs from the last round on (so the offset moves every refresh, and
        the first and last rounds absorb it)."""
        if round_index <= 0:
            return 0
        if round_index >= max(self.rounds, 1):
            return self.total_epochs
        return round_index * self.epochs_per_round + self.refresh_offset

    def round_epochs(self, round_index: int) -> range:
        """The global epochs that fine-tuning round_index -> round_index + 1 trains."""
        return range(self.round_start(round_index), self.round_start(round_index + 1))

    @classmethod
    def add_rounds_argument(cls, parser: argparse.ArgumentParser) -> None:
        """`--rounds`, the workflow-level count that both mining and fine-tuning need."""
        parser.add_argument(
            "--rounds",
            type=int,
            default=cls.rounds,
            help="hard-negative rounds R of the whole schedule (the workflow's rounds); with "
            "--epochs-per-round it fixes where the curriculum and the cosine end "
            "(default %(default)s)",
        )


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
