"""The round's MIL trained again at other seeds on the same features: how much of its test AUC
belongs to the features and how much to the draw of one weakly supervised training.

Each extra seed trains exactly what rule mil trained (hnm.mil.train.train_mil, the same
settings and feature files; only the seed, which sets the initial weights and the pair order,
differs) into a scratch folder, and is scored as the evaluation scores the round's own MIL: slide
AUC of the test bags, patch AUC of the test patches with known truth. The round's own MIL counts
as one of the runs, read from its evaluation; the spread is the mean and the sample standard
deviation over all of them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hnm.core.formatting import fmt_metric
from hnm.evaluate.evaluate import patch_metrics
from hnm.evaluate.metrics import roc_auc
from hnm.evaluate.settings import EvaluateSettings
from hnm.io.h5io import SlideData
from hnm.mil.settings import MilSettings

log = logging.getLogger(__name__)


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """{"n", "mean", "sd"} over the defined values; sd is the sample standard deviation (n - 1 in
    the denominator), None with fewer than two values, as the mean is with none."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return {
        "n": int(defined.size),
        "mean": float(defined.mean()) if defined.size else None,
        "sd": float(defined.std(ddof=1)) if defined.size > 1 else None,
    }


def own_aucs(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """The round's own MIL's test AUCs, from its evaluation metrics.json."""
    overall = ((evaluation.get("patch") or {}).get("test") or {}).get("overall") or {}
    return {
        "test_patch_auc": overall.get("auc"),
        "test_slide_auc": (evaluation.get("slide") or {}).get("auc"),
    }


def held_out_aucs(
    mil_dir: Path,
    eval_sheet: pd.DataFrame,
    tiles_files: dict[str, SlideData],
    evaluation: EvaluateSettings,
) -> dict[str, float | None]:
    """Test slide AUC and test patch AUC of a hnm mil output folder, as `hnm evaluate` computes
    them (the patch AUC over the test slides with known patch truth)."""
    slides = pd.read_parquet(mil_dir / "slides.parquet")
    test = slides[slides["split"] == "test"]
    slide_auc = roc_auc(test["label"], test["bag_prob"]) if len(test) else None
    patches = patch_metrics(
        eval_sheet,
        mil_dir / "scores" / "test.parquet",
        tiles_files,
        "test",
        [evaluation.annotation_class, *evaluation.versus_classes],
        evaluation.min_fraction,
    )
    overall = (patches or {}).get("overall") or {}
    return {"test_patch_auc": overall.get("auc"), "test_slide_auc": slide_auc}


def mil_seed_runs(
    sheet_path: str | os.PathLike[str],
    feature_files: Sequence[str | os.PathLike[str]],
    eval_sheet: pd.DataFrame,
    tiles_files: dict[str, SlideData],
    own_evaluation: dict[str, Any],
    mil: MilSettings,
    evaluation: EvaluateSettings,
    device: str = "auto",
    threads: int = 0,
) -> dict[str, Any] | None:
    """The round's own MIL (seed `mil.seed`) and one more per seed of `evaluate.mil_seeds`,
    with the mean and sd of their test AUCs; None when mil_seeds is empty (off). A listed seed
    equal to the round's own is not trained twice."""
    if not evaluation.mil_seeds:
        return None
    from hnm.mil.train import train_mil

    runs: list[dict[str, Any]] = [{"seed": mil.seed, "source": "round", **own_aucs(own_evaluation)}]
    repeated = [seed for seed in evaluation.mil_seeds if seed == mil.seed]
    if repeated:
        log.info("mil_seeds: seed %d is the round's own MIL, which is not trained twice", mil.seed)
    for seed in (s for s in evaluation.mil_seeds if s != mil.seed):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"hnm-mil-seed{seed}-") as out:
            train_mil(
                sheet_path,
                feature_files,
                out,
                None,
                replace(mil, seed=seed),
                device,
                threads=threads,
            )
            aucs = held_out_aucs(Path(out), eval_sheet, tiles_files, evaluation)
        seconds = time.perf_counter() - started
        runs.append({"seed": seed, "source": "extra", **aucs, "seconds": seconds})
        log.info(
            "MIL seed %d: test patch AUC %s, test slide AUC %s (%.1f s)",
            seed,
            fmt_metric(aucs["test_patch_auc"]),
            fmt_metric(aucs["test_slide_auc"]),
            seconds,
        )
    return {
        "seeds": [run["seed"] for run in runs],
        "runs": runs,
        "test_patch_auc": spread(run["test_patch_auc"] for run in runs),
        "test_slide_auc": spread(run["test_slide_auc"] for run in runs),
        "training_seconds": float(sum(run.get("seconds", 0.0) for run in runs)),
    }
