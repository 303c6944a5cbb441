"""Every knob of MIL training: its name, default, bounds and help, declared once (hnm.core.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import StageSettings, setting
from hnm.evaluate.metrics import THRESHOLD_METHODS
from hnm.mil import AGGREGATORS, DSMIL_VARIANTS


@dataclass(frozen=True)
class MilSettings(StageSettings):
    """Defaults are the demo's: a short schedule taken to its end, with the fast DSMIL variant
    (config/paper.yaml holds the authors' protocol: the reference variant, 350 epochs at lr 2e-4,
    StepLR stepped twice per epoch, and their snapshot epoch 199).

    Epochs are counted from 0, so `fixed_epoch` 199 is the 200th epoch; negative values count from
    the end (-1 = the last epoch), so a schedule can be shortened without moving the snapshot.
    `class_balance` acts only without the ranking loss: pair mode draws one bag of each class per
    step (balanced by construction), while bag mode weights each bag by n_train / (2 n_class) when
    `balanced`.
    """

    section = "mil"

    aggregator: str = setting("dsmil", "MIL aggregator (dsmil: the paper's)", choices=AGGREGATORS)
    dsmil: str = setting(
        "fast",
        "DSMIL bag branch: fast (query and value on the raw features) or reference (the authors' "
        "shared layer, as the paper trained)",
        choices=DSMIL_VARIANTS,
    )
    epochs: int = setting(150, "training epochs", minimum=1)
    lr: float = setting(1e-3, "Adam learning rate", above=0)
    weight_decay: float = setting(1e-4, "Adam weight decay", minimum=0)
    step_size: int = setting(75, "StepLR period, in scheduler steps", minimum=1)
    gamma: float = setting(0.5, "StepLR factor", above=0)
    scheduler_steps_per_epoch: int = setting(
        1,
        "StepLR steps at the end of each epoch: 1 changes the rate every step_size epochs; the "
        "authors' code stepped 2 (every step_size / 2 epochs)",
        minimum=1,
    )
    ranking_loss: bool = setting(
        True,
        "pair mode with the patch-wise ranking loss (HNM); false: one bag per step (ItS2CLR, DSMIL)",
    )
    w_bag: float = setting(0.5, "weight of the bag BCE", minimum=0)
    w_instance: float = setting(0.5, "weight of the max-instance BCE", minimum=0)
    w_rank: float = setting(0.1, "weight of the ranking loss", minimum=0)
    top_k: int = setting(10, "K of the ranking loss (capped at the bag size)", minimum=1)
    margin: float = setting(1.0, "margin of the ranking loss", minimum=0)
    class_balance: str = setting(
        "none",
        "bag mode only: balanced weights bags by inverse class frequency (pairs are balanced)",
        choices=("none", "balanced"),
    )
    select: str = setting(
        "fixed_epoch",
        "which epoch's model is kept: best_val (best validation metric) or fixed_epoch",
        choices=("best_val", "fixed_epoch"),
    )
    select_metric: str = setting(
        "auc", "validation metric for best_val", choices=("auc", "f1", "loss")
    )
    fixed_epoch: int = setting(
        -1, "with select fixed_epoch: 0-based epoch, negative counts from the end (-1 = last)"
    )
    threshold_method: str = setting(
        "f1",
        "decision threshold chosen on validation: max F1 or Youden's J",
        choices=THRESHOLD_METHODS,
    )
    checkpoint_every: int = setting(10, "epochs between resumable checkpoints", minimum=1)
    seed: int = 0

    def check(self) -> list[str]:
        if self.select == "fixed_epoch" and not -self.epochs <= self.fixed_epoch < self.epochs:
            return [
                f"fixed_epoch {self.fixed_epoch} is outside 0..{self.epochs - 1} (or "
                f"-{self.epochs}..-1 from the end; epochs are counted from 0 and there are "
                f"{self.epochs})"
            ]
        return []

    @property
    def snapshot_epoch(self) -> int:
        """`fixed_epoch` counted from 0."""
        return self.fixed_epoch % self.epochs if self.fixed_epoch < 0 else self.fixed_epoch
