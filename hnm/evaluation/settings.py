"""Every knob of patch-level evaluation, declared once (hnm.core.settings); no torch here, since the
evaluate rule runs in the report env."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import StageSettings, setting


@dataclass(frozen=True)
class EvaluationSettings(StageSettings):
    """Ground truth is read only where the sheet names annotation files, and never used to train.

    Defaults are the demo's, whose slides mark their tumor-like benign regions "Mimic"
    (config/paper.yaml scores no extra class).
    """

    section = "evaluation"

    annotation_class: str = setting(
        "Tumor", "GeoJSON class name of the tumor regions", pattern=r"\S"
    )
    min_fraction: float = setting(
        0.5, "a patch is tumor when at least this fraction of it is annotated", above=0, maximum=1
    )
    versus_classes: list[str] = setting(
        ["Mimic"],
        "other annotated classes to score tumor against one by one (the patch AUC of tumor "
        "against each alone); [] for none",
    )

    def check(self) -> list[str]:
        if any(not isinstance(name, str) or not name.strip() for name in self.versus_classes):
            return [f"versus_classes must list non-empty class names (got {self.versus_classes})"]
        return []
