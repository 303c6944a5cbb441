"""The end of a run: the last round's test metrics in results/final/, and one row per round.

rounds.csv is what a researcher reads to see whether the hard-negative rounds helped: per round the
MIL validation/test slide AUC, patch AUC where ground truth exists, how many hard negatives were
mined; timing.csv what fine-tuning, extraction and MIL training cost. Where annotations exist, the round's
feature quality (eval/probe.json, hnm.evaluate.feature_quality) adds the linear probe's test AUC
and the mean and sd of the MIL's test AUCs over seeds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hnm.core.atomic import atomic_path, write_json
from hnm.core.errors import HnmError
from hnm.core.formatting import fmt_metric
from hnm.evaluate.warnings import read_failures, run_warnings

log = logging.getLogger(__name__)

# From eval/probe.json: the linear probe's test AUC (tumor vs rest), and the MIL's test AUCs over
# seeds; empty without annotations, or where the probe had nothing to fit on (probe.json says why).
PROBE_COLUMNS = [
    "probe_test_auc",
    "mil_seeds_test_patch_auc_mean",
    "mil_seeds_test_patch_auc_sd",
    "mil_seeds_test_slide_auc_mean",
    "mil_seeds_test_slide_auc_sd",
]

ROUND_COLUMNS = [
    "round",
    "val_slide_auc",
    "val_f1",
    "test_slide_auc",
    "test_accuracy",
    "test_f1",
    "val_patch_auc",
    "test_patch_auc",
    "hard_negatives",
    "sets_refreshed",
    *PROBE_COLUMNS,
]
# What each round cost: in timing.csv, apart from rounds.csv, whose numbers a reproducible run
# repeats bit for bit (no two runs take the same time).
TIMING_COLUMNS = [
    "round",
    "finetune_epoch_seconds",
    "extraction_seconds",
    "extraction_patches_per_second",
    "mil_epoch_seconds",
]


@dataclass(frozen=True)
class RoundFiles:
    """What one round left that the report reads; the last round has no mining or next encoder."""

    mil_metrics: Path
    eval_metrics: Path
    mining_summary: Path | None = None
    next_encoder: Path | None = None
    probe: Path | None = None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise HnmError(
            f"{path} is missing; the report reads every round's outputs (run them first)"
        )
    return json.loads(path.read_text())


def _patch_auc(evaluation: dict[str, Any], split: str) -> float | None:
    overall = (evaluation.get("patch", {}).get(split) or {}).get("overall") or {}
    return overall.get("auc")


def _column_name(class_name: str) -> str:
    """A class name as a column suffix: lower case, runs of other characters as one `_`."""
    return re.sub(r"[^0-9a-z]+", "_", class_name.lower()).strip("_")


def _versus_aucs(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """{split}_patch_auc_vs_{class}: tumor against each other annotated class, per val/test."""
    columns: dict[str, float | None] = {}
    for split in ("val", "test"):
        versus = (evaluation.get("patch", {}).get(split) or {}).get("versus") or {}
        for name, summary in versus.items():
            columns[f"{split}_patch_auc_vs_{_column_name(name)}"] = summary.get("auc")
    return columns


def probe_columns(quality: dict[str, Any]) -> dict[str, float | None]:
    """PROBE_COLUMNS and probe_test_auc_vs_{class} from one round's probe.json."""
    probe = quality.get("probe") or {}
    seeds = quality.get("mil_seeds") or {}
    columns: dict[str, float | None] = {"probe_test_auc": probe.get("auc")}
    for metric in ("test_patch_auc", "test_slide_auc"):
        summary = seeds.get(metric) or {}
        columns[f"mil_seeds_{metric}_mean"] = summary.get("mean")
        columns[f"mil_seeds_{metric}_sd"] = summary.get("sd")
    for name, summary in (probe.get("versus") or {}).items():
        columns[f"probe_test_auc_vs_{_column_name(name)}"] = (summary or {}).get("auc")
    return columns


def _finetune_epoch_seconds(encoder: Path | None) -> float | None:
    """Mean epoch time recorded by the fine-tuning stage inside the next round's encoder file."""
    if encoder is None:
        return None
    import torch

    saved = torch.load(encoder, map_location="cpu", weights_only=False)
    seconds = (saved.get("extra") or {}).get("epoch_seconds") or []
    return float(sum(seconds) / len(seconds)) if seconds else None


FINETUNE_EPOCH_COLUMNS = [
    "round",
    "epoch",
    "global_epoch",
    "loss_negative",
    "loss_positive",
    "seconds",
]


def finetune_epochs(encoders: list[Path]) -> pd.DataFrame:
    """One row per fine-tuning epoch of every round (the encoder of round r, r >= 1, holds the
    losses of the epochs that made it): local and global (encoder) epoch, mean losses, seconds."""
    import torch

    rows: list[dict[str, Any]] = []
    for round_, encoder in enumerate(encoders, start=1):
        saved = torch.load(encoder, map_location="cpu", weights_only=False)
        extra = saved.get("extra") or {}
        losses = extra.get("losses") or []
        seconds = extra.get("epoch_seconds") or []
        end = int(saved.get("epoch") or len(losses))
        for local, loss in enumerate(losses):
            rows.append(
                {
                    "round": round_,
                    "epoch": local + 1,
                    "global_epoch": end - len(losses) + local + 1,
                    "loss_negative": loss.get("loss_negative"),
                    "loss_positive": loss.get("loss_positive"),
                    "seconds": seconds[local] if local < len(seconds) else None,
                }
            )
    return pd.DataFrame(rows, columns=FINETUNE_EPOCH_COLUMNS)


# Label-free signs of the round's mining (hnm.mine.health), beside the set counts.
HEALTH_COLUMNS = (
    "pseudo_positive_slides",
    "pseudo_positive_top_slide_share",
    "pseudo_positive_fraction",
    "pos_overlap_previous",
    "hardneg_overlap_previous",
)


def round_row(round_: int, files: RoundFiles) -> dict[str, Any]:
    mil = _read_json(files.mil_metrics)
    evaluation = _read_json(files.eval_metrics)
    mining = _read_json(files.mining_summary) if files.mining_summary else {}
    slide = evaluation.get("slide", {})
    extraction = mil.get("extraction") or {}
    extraction_seconds = extraction.get("seconds")
    patches = extraction.get("patches")
    return {
        "round": round_,
        "val_slide_auc": (mil.get("val") or {}).get("auc"),
        "val_f1": (mil.get("val") or {}).get("f1"),
        "test_slide_auc": slide.get("auc"),
        "test_accuracy": slide.get("accuracy"),
        "test_f1": slide.get("f1"),
        "val_patch_auc": _patch_auc(evaluation, "val"),
        "test_patch_auc": _patch_auc(evaluation, "test"),
        "hard_negatives": (mining.get("counts") or {}).get("hardneg"),
        "sets_refreshed": mining.get("refreshed"),
        **{name: (mining.get("health") or {}).get(name) for name in HEALTH_COLUMNS},
        "finetune_epoch_seconds": _finetune_epoch_seconds(files.next_encoder),
        "extraction_seconds": extraction_seconds,
        "extraction_patches_per_second": (
            patches / extraction_seconds if extraction_seconds and patches else None
        ),
        "mil_epoch_seconds": (mil.get("timing") or {}).get("epoch_seconds_mean"),
        **_versus_aucs(evaluation),
        **(probe_columns(_read_json(files.probe)) if files.probe else {}),
    }


def write_report(
    rounds: list[RoundFiles],
    last_predictions: str | os.PathLike[str],
    out_metrics: str | os.PathLike[str],
    out_predictions: str | os.PathLike[str],
    out_rounds: str | os.PathLike[str],
    out_finetune: str | os.PathLike[str] | None = None,
    failures: str | os.PathLike[str] | None = None,
    out_timing: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """rounds.csv from every round's files, and the last round's metrics and predictions; the
    metrics carry `warnings`, every slide skipped (`failures`, results/qc/failed_slides.tsv) and
    every degradation the rounds recorded (hnm.evaluate.warnings); with `out_finetune`, the
    fine-tuning losses per epoch (finetune_epochs)."""
    rows = [round_row(r, files) for r, files in enumerate(rounds)]
    known = set(ROUND_COLUMNS) | set(TIMING_COLUMNS)
    extra = [column for row in rows for column in row if column not in known]
    table = pd.DataFrame(rows, columns=ROUND_COLUMNS + list(dict.fromkeys(extra)))
    with atomic_path(out_rounds) as temporary:
        table.to_csv(temporary, index=False)
    if out_timing is not None:
        with atomic_path(out_timing) as temporary:
            pd.DataFrame(rows, columns=TIMING_COLUMNS).to_csv(temporary, index=False)
    final = _read_json(rounds[-1].eval_metrics)
    final["round"] = len(rounds) - 1
    final["rounds_table"] = str(out_rounds)
    final["warnings"] = run_warnings(
        read_failures(failures), [_read_json(r.mil_metrics) for r in rounds], final
    )
    write_json(out_metrics, final)
    for warning in final["warnings"]:
        log.warning("%s", warning)
    with atomic_path(out_predictions) as temporary:
        shutil.copyfile(last_predictions, temporary)
    if out_finetune is not None:
        encoders = [files.next_encoder for files in rounds if files.next_encoder is not None]
        with atomic_path(out_finetune) as temporary:
            finetune_epochs(encoders).to_csv(temporary, index=False)
    for row in table.to_dict("records"):
        log.info(
            "round %d: val AUC %s, test AUC %s, test patch AUC %s, probe test AUC %s, "
            "hard negatives %s",
            row["round"],
            fmt_metric(row["val_slide_auc"]),
            fmt_metric(row["test_slide_auc"]),
            fmt_metric(row["test_patch_auc"]),
            fmt_metric(row["probe_test_auc"]),
            row["hard_negatives"],
        )
    return table
