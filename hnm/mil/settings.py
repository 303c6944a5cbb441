"""Every knob of MIL training, with the METHOD.md defaults, validated in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hnm.errors import ConfigError
from hnm.metrics import THRESHOLD_METHODS
from hnm.mil import AGGREGATORS

CLASS_BALANCE = ("none", "balanced")
SELECT_MODES = ("best_val", "fixed_epoch")
SELECT_METRICS = ("auc", "f1", "loss")


@dataclass(frozen=True)
class MilSettings:
    """Defaults are the paper's (Adam 2e-4, wd 1e-4, 350 epochs, StepLR 75 x 0.5, K 10, margin 1).

    Epochs are counted from 0, so `fixed_epoch` 199 is the 200th epoch; negative values count from
    the end (-1 = the last epoch), so a schedule can be shortened without moving the snapshot.
    `class_balance` acts only without the ranking loss: pair mode draws one bag of each class per
    step (balanced by construction), while bag mode weights each bag by n_train / (2 n_class) when
    `balanced`.
    """

    aggregator: str = "dsmil"
    epochs: int = 350
    lr: float = 2e-4
    weight_decay: float = 1e-4
    step_size: int = 75
    gamma: float = 0.5
    ranking_loss: bool = True
    w_bag: float = 0.5
    w_instance: float = 0.5
    w_rank: float = 0.1
    top_k: int = 10
    margin: float = 1.0
    class_balance: str = "none"
    select: str = "best_val"
    select_metric: str = "auc"
    fixed_epoch: int = 199
    threshold_method: str = "f1"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name, allowed in (
            ("aggregator", AGGREGATORS),
            ("class_balance", CLASS_BALANCE),
            ("select", SELECT_MODES),
            ("select_metric", SELECT_METRICS),
            ("threshold_method", THRESHOLD_METHODS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(
                    f"{name} '{getattr(self, name)}' is not one of {', '.join(allowed)}"
                )
        for name in ("epochs", "step_size", "top_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("lr", "gamma"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        for name in ("weight_decay", "w_bag", "w_instance", "w_rank", "margin"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative (got {getattr(self, name)})")
        if self.select == "fixed_epoch" and not -self.epochs <= self.fixed_epoch < self.epochs:
            problems.append(
                f"fixed_epoch {self.fixed_epoch} is outside 0..{self.epochs - 1} (or "
                f"-{self.epochs}..-1 from the end; epochs are counted from 0 and there are "
                f"{self.epochs})"
            )
        if problems:
            raise ConfigError("MIL settings: " + "; ".join(problems))

    @property
    def snapshot_epoch(self) -> int:
        """`fixed_epoch` counted from 0."""
        return self.fixed_epoch % self.epochs if self.fixed_epoch < 0 else self.fixed_epoch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
