"""Slide- and patch-level evaluation of one trained MIL aggregator (docs/method.md, "Evaluation").

Slide metrics use the decision threshold chosen on VALIDATION and stored in the MIL metrics.json;
it is never re-chosen on the evaluated split (the authors picked model and threshold on test).
Patch metrics need patch ground truth, which is optional and used nowhere else: a slide's truth is
its GeoJSON annotation (sheet column `annotation`) mapped onto its patch grid; a negative slide
without annotation has no tumour patch; a positive slide without annotation has unknown patch
truth and is left out of the patch metrics.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hnm.core.atomic import atomic_path, write_json
from hnm.core.errors import CheckpointError, HnmError
from hnm.core.formatting import fmt_metric
from hnm.evaluate.metrics import average_precision, best_f1, binary_metrics, roc_auc
from hnm.io.h5io import SlideData, files_by_slide, read_tiles_or_fail, slide_file
from hnm.io.sheet import SPLITS, read_normalised_sheet

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["slide_id", "split", "label", "prob", "predicted", "threshold"]


@dataclass(frozen=True)
class MilFiles:
    """The hnm mil outputs evaluation reads: metrics.json (the val threshold), slides.parquet
    (bag probabilities) and the per-split patch scores that exist."""

    metrics: str | os.PathLike[str]
    slides: str | os.PathLike[str]
    scores: dict[str, str | os.PathLike[str]] = field(default_factory=dict)


def evaluate(
    sheet_path: str | os.PathLike[str],
    mil: MilFiles,
    tiles: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    predictions_path: str | os.PathLike[str],
    split: str = "test",
    annotation_class: str = "Tumor",
    min_fraction: float = 0.5,
    versus_classes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write metrics JSON (slide metrics on `split`, patch metrics per annotated split) and
    predictions CSV (every scored slide, all splits, with the val threshold).

    `versus_classes` are other annotated classes (the demo's "Mimic", a user's "Necrosis"): for
    each, the patch AUC of tumor against that class alone says what the overall patch AUC hides,
    whether the scores separate tumor from the tissue that looks like it."""
    if split not in SPLITS:
        raise HnmError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    sheet = read_normalised_sheet(sheet_path)
    tiles_files = files_by_slide(tiles, "tiles")
    mil_metrics = _read_mil_metrics(Path(mil.metrics))
    threshold = float(mil_metrics["threshold"])
    slides = _read_parquet(Path(mil.slides))

    predictions = pd.DataFrame(
        {
            "slide_id": slides["slide_id"].astype(str),
            "split": slides["split"],
            "label": slides["label"].astype(int),
            "prob": slides["bag_prob"].astype(float),
            "predicted": (slides["bag_prob"] >= threshold).astype(int),
            "threshold": threshold,
        },
        columns=PREDICTION_COLUMNS,
    )
    on_split = predictions[predictions["split"] == split]
    wanted = set(sheet.loc[sheet["split"] == split, "slide_id"].astype(str))
    not_scored = sorted(wanted - set(on_split["slide_id"]))
    if not_scored:
        log.warning(
            "%d %s slide(s) of the sheet have no MIL prediction (excluded upstream): %s",
            len(not_scored),
            split,
            ", ".join(not_scored[:10]),
        )
    slide_metrics: dict[str, Any] = {
        "n_slides": int(len(on_split)),
        "n_positive": int(on_split["label"].sum()),
        "n_negative": int((on_split["label"] == 0).sum()),
        "auc": roc_auc(on_split["label"], on_split["prob"]) if len(on_split) else None,
        **binary_metrics(on_split["label"], on_split["predicted"]),
        "not_scored": not_scored,
    }
    if slide_metrics["auc"] is None:
        log.warning("slide AUC on %s is undefined: the split lacks a class", split)

    per_split: dict[str, Any] = {}
    for patch_split in SPLITS:
        result = patch_metrics(
            sheet,
            mil.scores.get(patch_split),
            tiles_files,
            patch_split,
            [annotation_class, *versus_classes],
            min_fraction,
        )
        if result is not None:
            per_split[patch_split] = result

    metrics = {
        "split": split,
        "threshold": threshold,
        "threshold_method": mil_metrics.get("threshold_method"),
        "threshold_source": str(mil.metrics),
        "selected_epoch": mil_metrics.get("selected_epoch"),
        "aggregator": mil_metrics.get("aggregator"),
        "slide": slide_metrics,
        "patch": per_split,
    }
    with atomic_path(predictions_path) as temporary:
        predictions.to_csv(temporary, index=False)
    write_json(out, metrics)
    log.info(
        "%s: slide AUC %s, accuracy %s, F1 %s at val threshold %.4f; patch metrics for %s",
        split,
        fmt_metric(slide_metrics["auc"]),
        fmt_metric(slide_metrics["accuracy"]),
        fmt_metric(slide_metrics["f1"]),
        threshold,
        ", ".join(per_split) or "no split (no annotations)",
    )
    return metrics


def patch_metrics(
    sheet: pd.DataFrame,
    scores_path: str | os.PathLike[str] | None,
    tiles_files: dict[str, SlideData],
    split: str,
    classes: list[str],
    min_fraction: float,
) -> dict[str, Any] | None:
    """Patch AUC/AUPRC/best F1 over slides with known patch truth, and tumor against each other
    class of `classes` (the first is tumor); None without annotations."""
    rows = sheet[sheet["split"] == split]
    annotated = rows["annotation"].fillna("").astype(str).str.len() > 0
    if not annotated.any():
        return None
    if scores_path is None:
        raise HnmError(
            f"the {split} split has annotated slides but no {split} scores file was passed "
            f"(--{split}-scores)"
        )
    scores = _read_parquet(Path(scores_path))
    by_slide = {str(k): group for k, group in scores.groupby("slide_id", sort=False)}
    labels: list[list[np.ndarray]] = []  # per slide: one mask per class
    values: list[np.ndarray] = []
    positive_slide: list[np.ndarray] = []
    skipped: list[str] = []
    for _, row in rows.iterrows():
        slide_id = str(row["slide_id"])
        annotation = str(row["annotation"] or "")
        if slide_id not in by_slide:
            skipped.append(f"{slide_id} (not scored)")
            continue
        if not annotation and int(row["label"]) == 1:
            skipped.append(f"{slide_id} (positive without annotation)")
            continue
        group = by_slide[slide_id]
        idx = group["idx"].to_numpy(np.int64)
        if annotation:
            masks = annotated_labels(slide_id, annotation, tiles_files, idx, classes, min_fraction)
        else:
            masks = [np.zeros(len(idx), dtype=bool) for _ in classes]
        labels.append(masks)
        values.append(group["score"].to_numpy(np.float64))
        positive_slide.append(np.full(len(idx), int(row["label"]) == 1))
    if skipped:
        log.info("%s patch metrics leave out: %s", split, "; ".join(skipped))
    if not labels:
        return {"overall": None, "positive_slides": None, "versus": {}, "skipped": skipped}
    truth, *others = [np.concatenate(masks) for masks in zip(*labels)]
    score = np.concatenate(values)
    on_positive = np.concatenate(positive_slide)
    return {
        "overall": _patch_summary(truth, score, int(len(labels))),
        "positive_slides": _patch_summary(
            truth[on_positive], score[on_positive], int(sum(p.any() for p in positive_slide))
        ),
        "versus": {
            name: versus_summary(truth, other & ~truth, score)
            for name, other in zip(classes[1:], others)
        },
        "skipped": skipped,
    }


def versus_summary(truth: np.ndarray, other: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """Tumor patches against the patches of one other class (a patch in both counts as tumor)."""
    pair = truth | other
    both = bool(truth.any() and other.any())
    return {
        "n_tumour_patches": int(truth.sum()),
        "n_class_patches": int(other.sum()),
        "auc": roc_auc(truth[pair], score[pair]) if both else None,
    }


def annotated_labels(
    slide_id: str,
    annotation: str,
    tiles_files: dict[str, SlideData],
    idx: np.ndarray,
    classes: list[str],
    min_fraction: float,
) -> list[np.ndarray]:
    """One mask per class name over the scored patches `idx` of a slide."""
    try:
        from hnm.io.annotations import load_polygons_by_class, patch_labels
    except ImportError as error:  # pragma: no cover - the module ships with the package
        raise HnmError("patch ground truth needs hnm.io.annotations, which is missing") from error
    tiles_path = slide_file(tiles_files, slide_id, "tiles")
    coords, attrs = read_tiles_or_fail(tiles_path)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(coords)):
        raise HnmError(
            f"slide '{slide_id}': scores refer to patch {int(idx.max())} but {tiles_path} has "
            f"{len(coords)} patches; features and tiles are out of step (re-run extraction)"
        )
    step = float(attrs["step_level0"])
    by_class = load_polygons_by_class(annotation, classes)
    return [
        np.asarray(patch_labels(by_class[name], coords, step, min_fraction=min_fraction), bool)[idx]
        for name in classes
    ]


def _patch_summary(truth: np.ndarray, score: np.ndarray, n_slides: int) -> dict[str, Any]:
    best = best_f1(truth, score)
    return {
        "n_slides": n_slides,
        "n_patches": int(truth.size),
        "n_tumour_patches": int(truth.sum()),
        "auc": roc_auc(truth, score) if truth.size else None,
        "auprc": average_precision(truth, score) if truth.size else None,
        "best_f1": best[0] if best else None,
        "best_f1_threshold": best[1] if best else None,
    }


def _read_mil_metrics(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"MIL metrics {path} is missing; run hnm mil first")
    try:
        metrics = json.loads(path.read_text())
        float(metrics["threshold"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"MIL metrics {path} is unreadable or has no numeric `threshold` ({error}); "
            "re-run hnm mil"
        ) from error
    return metrics


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise CheckpointError(f"MIL output {path} is missing; run hnm mil first")
    return pd.read_parquet(path)
