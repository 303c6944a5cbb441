"""Every knob of patch-level evaluation, declared once (hnm.core.settings); no torch here, since the
evaluate rule runs in the report env."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import StageSettings, setting

# The settings only the feature-quality stage reads (`hnm probe`, rules/probe.smk): the other
# evaluation rules leave them out of their flags, so changing one re-runs the probe and nothing else.
PROBE_SETTINGS = ("probe_c", "probe_max_iter", "probe_max_patches", "mil_seeds")


@dataclass(frozen=True)
class EvaluateSettings(StageSettings):
    """Ground truth is read only where the sheet names annotation files, and never used to train
    anything the pipeline keeps: the linear probe fits it on the train slides to measure the
    features, and its result goes nowhere but the evaluation files.

    Defaults are the demo's, whose slides mark their tumor-like benign regions "Mimic"
    (config/paper.yaml scores no extra class).
    """

    section = "evaluate"

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
    probe_c: float = setting(
        1.0,
        "inverse L2 regularisation strength C of the linear probe (logistic regression on "
        "standardised features)",
        above=0,
    )
    probe_max_iter: int = setting(
        1000, "L-BFGS iterations the linear probe may take to converge", minimum=1
    )
    probe_max_patches: int = setting(
        20000,
        "train patches the linear probe is fitted on at most: a sample drawn with the run's seed, "
        "the same patches every round",
        minimum=2,
    )
    mil_seeds: list[int] = setting(
        [1, 2],
        "extra seeds at which the round's MIL is trained again on the same features, for the "
        "mean and sd of its test AUCs over seeds (with the round's own); [] for none",
        schema={"items": {"type": "integer", "minimum": 0}, "uniqueItems": True},
    )

    def check(self) -> list[str]:
        problems = []
        if any(not isinstance(name, str) or not name.strip() for name in self.versus_classes):
            problems.append(
                f"versus_classes must list non-empty class names (got {self.versus_classes})"
            )
        seeds = self.mil_seeds
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            problems.append(f"mil_seeds must list integers >= 0 (got {seeds})")
        elif len(set(seeds)) != len(seeds):
            problems.append(f"mil_seeds must not repeat a seed (got {seeds})")
        return problems
