"""Every knob of mining, declared once (hnm.core.settings): the `mining` config section.

Three of them choose between hnm's own behaviour and the authors' trainer (docs/method.md,
"Where hnm differs from the authors' code"): when the curriculum is re-cut, whether and how the
lowest-scoring patches of positive slides join the negatives, and which validation F1 the gated
refresh compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hnm.core.settings import StageSettings, setting
from hnm.finetune.settings import EncoderSchedule

CONFIDENT_NEGATIVES = ("none", "fixed", "self_paced")
CURRICULUM_UPDATES = ("round", "epoch")
GATE_METRICS = ("snapshot", "best_epoch")


@dataclass(frozen=True)
class MineSettings(StageSettings):
    """`schedule` is the encoder's epoch schedule, whose settings belong to the finetune section
    (hnm.finetune.settings.EncoderSchedule)."""

    section = "mine"

    eta: float = setting(
        0.3, "pseudo-positive threshold on sigmoid instance scores", minimum=0, maximum=1
    )
    neg_ratio: float = setting(
        0.2,
        "hard negatives = top neg_ratio of negative-slide patches (1.0 = all, ItS2CLR)",
        minimum=0,
        maximum=1,
    )
    r0: float = setting(
        0.2, "curriculum: fraction of pseudo-positives used up to warm-up", minimum=0, maximum=1
    )
    r_final: float = setting(
        0.8,
        "curriculum: the fraction grows linearly to this at the last epoch of the schedule",
        minimum=0,
        maximum=1,
    )
    curriculum_update: str = setting(
        "round",
        "when the curriculum is re-cut: round (once, at the round's first epoch) or epoch (the "
        "authors': every epoch, with the ratio reached at the end of the previous epoch)",
        choices=CURRICULUM_UPDATES,
    )
    confident_negatives: str = setting(
        "none",
        "lowest-scoring positive-slide patches (s <= eta) as extra negatives of the positive-anchor "
        "update: none; fixed (the lowest r_neg0 of all positive-slide scores, every round); "
        "self_paced (the authors': from the first accepted refresh on, the lowest r_neg(t) of the "
        "patches at or below eta, r_neg growing from r_neg0 to r_final every epoch)",
        choices=CONFIDENT_NEGATIVES,
    )
    r_neg0: float = setting(
        0.2,
        "confident negatives: starting fraction (fixed: the whole time)",
        minimum=0,
        maximum=1,
    )
    gate: bool = setting(
        True, "keep the previous sets when this round's val F1 is below the best so far"
    )
    gate_metric: str = setting(
        "snapshot",
        "the val F1 the gate compares: snapshot (the kept MIL model's, at its val-chosen "
        "threshold) or best_epoch (the authors': the best over all MIL epochs, each at its own "
        "Youden point on val)",
        choices=GATE_METRICS,
    )
    schedule: EncoderSchedule = field(default_factory=EncoderSchedule)
