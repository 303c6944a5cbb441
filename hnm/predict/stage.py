"""Scoring new slides with a finished run's MIL model: slide probability, decision, patch scores.

The slides' features come from the final round's encoder (rules/predict.smk), and they are scored
by hnm.mil.outputs.score_slides, the function training scores its own splits with, at the decision
threshold training chose on validation (the MIL metrics.json). So a slide the run evaluated gets the
same probability here as in results/final/predictions.csv; nothing is fitted or re-chosen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hnm import __version__
from hnm.core.atomic import atomic_path, write_json
from hnm.core.device import resolve_device
from hnm.core.errors import CheckpointError, HnmError
from hnm.core.threads import torch_threads
from hnm.io.h5io import files_by_slide
from hnm.io.sheet import read_normalised_sheet
from hnm.mil.data import load_cohort
from hnm.mil.outputs import score_slides, write_parquet
from hnm.mil.train import load_model, mil_threads

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["slide_id", "prob", "predicted", "threshold", "logit", "n_patches"]
# The bag label of an unlabelled slide: a Bag needs an int, and scoring never reads it.
UNKNOWN_LABEL = -1


def predict_slides(
    sheet_path: str | os.PathLike[str],
    feature_files: Iterable[str | os.PathLike[str]],
    model_path: str | os.PathLike[str],
    mil_metrics_path: str | os.PathLike[str],
    out_predictions: str | os.PathLike[str],
    out_scores: str | os.PathLike[str],
    out_summary: str | os.PathLike[str],
    device: str = "auto",
    threads: int = 0,
) -> pd.DataFrame:
    """Write predictions.csv (one row per scored slide: PREDICTION_COLUMNS), the patch scores
    (parquet: slide_id, idx, x, y, size, logit, score, as training's scores/*.parquet) and a JSON
    summary (the model, threshold and slides left out); return the predictions."""
    torch_device = resolve_device(device)
    threshold, mil_metrics = read_threshold(Path(mil_metrics_path))
    sheet = read_normalised_sheet(sheet_path)
    cohort = load_cohort(
        sheet.assign(label=UNKNOWN_LABEL),
        files_by_slide(feature_files, "features"),
        torch_device,
    )
    expected = _model_feature_dim(Path(model_path))
    if expected != cohort.feature_dim:
        raise HnmError(
            f"the new slides' features are {cohort.feature_dim}-d but the MIL model {model_path} "
            f"takes {expected}-d ones: they were not extracted with the final round's encoder "
            "(was encoder.arch changed after training?); delete the predict folder's features "
            "and run `snakemake predict` again with the training run's config"
        )
    model = load_model(model_path, torch_device)
    with torch_threads(mil_threads(threads, cohort, torch_device)):
        slides, scores = score_slides(model, cohort, np.arange(len(cohort.bags)))
    sizes = {bag.slide_id: bag.size for bag in cohort.bags}
    predictions = pd.DataFrame(
        {
            "slide_id": slides["slide_id"].astype(str),
            "prob": slides["bag_prob"].astype(float),
            "predicted": (slides["bag_prob"] >= threshold).astype(int),
            "threshold": threshold,
            "logit": slides["bag_logit"].astype(float),
            "n_patches": [sizes[s] for s in slides["slide_id"]],
        },
        columns=PREDICTION_COLUMNS,
    )
    for item in cohort.excluded:
        log.warning("%s: not predicted: %s", item.get("slide_id"), item.get("reason"))
    with atomic_path(out_predictions) as temporary:
        predictions.to_csv(temporary, index=False)
    write_parquet(Path(out_scores), scores)
    write_json(
        out_summary,
        {
            "model": str(model_path),
            "threshold": threshold,
            "threshold_method": mil_metrics.get("threshold_method"),
            "threshold_source": str(mil_metrics_path),
            "aggregator": mil_metrics.get("aggregator"),
            "n_slides": int(len(sheet)),
            "n_predicted": int(len(predictions)),
            "n_tumor": int(predictions["predicted"].sum()),
            "excluded_slides": cohort.excluded,
            "code_version": __version__,
        },
    )
    log.info(
        "%d of %d slide(s) predicted at the val threshold %.4f: %d tumor, %d normal",
        len(predictions),
        len(sheet),
        threshold,
        int(predictions["predicted"].sum()),
        int((predictions["predicted"] == 0).sum()),
    )
    return predictions


def read_threshold(path: Path) -> tuple[float, dict[str, Any]]:
    """The decision threshold training chose on validation, and the MIL metrics it came from."""
    try:
        metrics = json.loads(path.read_text())
        return float(metrics["threshold"]), metrics
    except FileNotFoundError as error:
        raise CheckpointError(
            f"MIL metrics {path} is missing: the training run has not finished; run `snakemake` "
            "(or let `snakemake predict` train first)"
        ) from error
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"MIL metrics {path} is unreadable or has no numeric `threshold` ({error}); delete it "
            "and re-run hnm mil"
        ) from error


def _model_feature_dim(path: Path) -> int:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return int(saved["feature_dim"])
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"MIL model {path} cannot be read ({error}); delete it and re-run hnm mil"
        ) from error
