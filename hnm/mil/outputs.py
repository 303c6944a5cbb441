"""What a MIL training job writes: every slide scored by the selected model, the threshold chosen
on validation, the model, the epoch log and metrics.json, each file atomically."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hnm import __version__
from hnm.core.atomic import atomic_path, write_json
from hnm.core.formatting import fmt_metric
from hnm.evaluate.metrics import binary_metrics, choose_threshold
from hnm.io.sheet import SPLITS
from hnm.mil.data import Cohort
from hnm.mil.files import mil_file
from hnm.mil.scoring import score_bags
from hnm.mil.settings import MilSettings

log = logging.getLogger(__name__)

SLIDE_COLUMNS = ["slide_id", "split", "label", "bag_logit", "bag_prob"]
EPOCH_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_f1",
    "val_f1_youden",
    "lr",
    "seconds",
]


@dataclass
class TrainedModel:
    """The selected model and the run's epoch log (rows of EPOCH_COLUMNS)."""

    model: torch.nn.Module
    rows: list[dict[str, Any]]
    selected_epoch: int


def best_epoch_f1(rows: list[dict[str, Any]]) -> float | None:
    """The largest val_f1_youden of the epoch log; None where no epoch had one."""
    values = [row.get("val_f1_youden") for row in rows]
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return max(present) if present else None


def write_outputs(
    out_dir: Path,
    trained: TrainedModel,
    cohort: Cohort,
    settings: MilSettings,
    metric_used: str,
    notes: list[str],
    device: torch.device,
) -> dict[str, Any]:
    """Score every slide with the selected model and write all outputs, each atomically."""
    slides = _score_all(out_dir, trained.model, cohort)
    val_slides = slides[slides["split"] == "val"]
    threshold, threshold_f1, threshold_accuracy = 0.5, None, None
    if val_slides["label"].nunique() == 2:
        threshold, _ = choose_threshold(
            val_slides["label"], val_slides["bag_prob"], settings.threshold_method
        )
    else:
        notes.append("validation split lacks a class; the decision threshold is 0.5")
        log.warning(notes[-1])
    if len(val_slides):
        at_threshold = binary_metrics(val_slides["label"], val_slides["bag_prob"] >= threshold)
        threshold_f1, threshold_accuracy = at_threshold["f1"], at_threshold["accuracy"]

    selected = trained.selected_epoch
    chosen_row = next(row for row in trained.rows if row["epoch"] == selected)
    seconds = [float(row["seconds"]) for row in trained.rows]
    metrics: dict[str, Any] = {
        "aggregator": settings.aggregator,
        "device": device.type,
        "settings": settings.as_dict(),
        "selected_epoch": selected,
        "selection": {
            "mode": settings.select,
            "metric": settings.select_metric,
            "metric_used": metric_used if settings.select == "best_val" else None,
        },
        # val.f1 / val.accuracy are at the val-chosen threshold; f1_at_0.5 is the epoch log's F1
        "val": {
            "n_slides": int(len(val_slides)),
            "auc": chosen_row["val_auc"],
            "loss": chosen_row["val_loss"],
            "f1": threshold_f1,
            "accuracy": threshold_accuracy,
            "f1_at_0.5": chosen_row["val_f1"],
            # the authors' gate: the best per-epoch F1, each epoch at its own Youden point
            "best_epoch_f1": best_epoch_f1(trained.rows),
        },
        "threshold": threshold,
        "threshold_method": settings.threshold_method,
        "n_slides": {split: int((slides["split"] == split).sum()) for split in SPLITS},
        "excluded_slides": cohort.excluded,
        "extraction": {
            "patches": int(sum(item["patches"] for item in cohort.identities)),
            "seconds": float(sum(item["extract_seconds"] for item in cohort.identities)),
        },
        "notes": notes,
        "timing": {
            "epoch_seconds": seconds,
            "epoch_seconds_mean": float(np.mean(seconds)) if seconds else None,
            "total_seconds": float(np.sum(seconds)),
        },
        "code_version": __version__,
    }
    with atomic_path(mil_file(out_dir, "model")) as temporary:
        torch.save(
            {
                "state_dict": {k: v.cpu() for k, v in trained.model.state_dict().items()},
                "aggregator": settings.aggregator,
                "dsmil": settings.dsmil,
                "feature_dim": cohort.feature_dim,
                "settings": settings.as_dict(),
                "selected_epoch": selected,
                "threshold": threshold,
                "code_version": __version__,
            },
            temporary,
        )
    with atomic_path(mil_file(out_dir, "epochs")) as temporary:
        pd.DataFrame(trained.rows, columns=EPOCH_COLUMNS).to_csv(temporary, index=False)
    write_json(mil_file(out_dir, "metrics"), metrics)
    log.info(
        "selected epoch %d (val auc %s, val loss %s); threshold %.4f (%s), val F1 there %s; "
        "mean epoch %.2f s",
        selected,
        fmt_metric(chosen_row["val_auc"]),
        fmt_metric(chosen_row["val_loss"]),
        threshold,
        settings.threshold_method,
        fmt_metric(threshold_f1),
        metrics["timing"]["epoch_seconds_mean"] or 0.0,
    )
    return metrics


def _score_all(out_dir: Path, model: torch.nn.Module, cohort: Cohort) -> pd.DataFrame:
    """Write scores/<split>.parquet and slides.parquet (score_slides' tables, one split each) and
    return the slide table of all splits."""
    slide_tables = []
    for split in SPLITS:
        slides, scores = score_slides(model, cohort, cohort.indices(split))
        slide_tables.append(slides)
        write_parquet(mil_file(out_dir, split), scores)
    # Empty splits left out: their column types would turn the others' to object.
    filled = [table for table in slide_tables if len(table)]
    slides = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=SLIDE_COLUMNS)
    write_parquet(mil_file(out_dir, "slides"), slides)
    return slides


def score_slides(
    model: torch.nn.Module, cohort: Cohort, indices: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bags `indices` scored by `model`: (one row per slide: SLIDE_COLUMNS; one row per patch:
    slide_id, idx, logit, score, and the patch's level-0 top-left x, y and side `size` in level-0
    px). Training scores its splits with this, and `hnm predict` new slides, so a slide scored by
    both gets the same probability."""
    scored = score_bags(model, cohort, indices, keep_instances=True)
    bag_logits = scored.bag_logits.cpu().numpy().astype(np.float64)
    assert scored.instance_logits is not None
    slide_rows: list[dict[str, Any]] = []
    frames = []
    for index, bag_logit, logits in zip(indices, bag_logits, scored.instance_logits):
        bag = cohort.bags[int(index)]
        slide_rows.append(
            {
                "slide_id": bag.slide_id,
                "split": bag.split,
                "label": bag.label,
                "bag_logit": float(bag_logit),
                "bag_prob": float(_sigmoid(bag_logit)),
            }
        )
        frames.append(
            pd.DataFrame(
                {
                    "slide_id": bag.slide_id,
                    "idx": np.arange(bag.size, dtype=np.int64),
                    "logit": logits.astype(np.float32),
                    "score": _sigmoid(logits).astype(np.float32),
                    "x": bag.coords[:, 0] if len(bag.coords) == bag.size else -1,
                    "y": bag.coords[:, 1] if len(bag.coords) == bag.size else -1,
                    "size": np.int64(bag.patch_level0),
                }
            )
        )
    scores = pd.concat(frames, ignore_index=True) if frames else _empty_scores()
    return pd.DataFrame(slide_rows, columns=SLIDE_COLUMNS), scores


def _sigmoid(x: Any) -> Any:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "slide_id": pd.Series(dtype=str),
            "idx": pd.Series(dtype=np.int64),
            "logit": pd.Series(dtype=np.float32),
            "score": pd.Series(dtype=np.float32),
            "x": pd.Series(dtype=np.int64),
            "y": pd.Series(dtype=np.int64),
            "size": pd.Series(dtype=np.int64),
        }
    )


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as temporary:
        frame.to_parquet(temporary, index=False)
