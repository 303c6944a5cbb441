"""The end of a run: the last round's test metrics in results/final/, and one row per round.

rounds.csv is what a researcher reads to see whether the hard-negative rounds helped: per round the
MIL validation/test slide AUC, patch AUC where ground truth exists, how many hard negatives were
mined, and what fine-tuning, extraction and MIL training cost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from hnm.core.atomic import atomic_path, write_json
from hnm.core.formatting import fmt_metric

log = logging.getLogger(__name__)

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
    "finetune_epoch_seconds",
    "extraction_seconds",
    "extraction_patches_per_second",
    "mil_epoch_seconds",
]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _patch_auc(evaluation: dict[str, Any], split: str) -> float | None:
    overall = (evaluation.get("patch", {}).get(split) or {}).get("overall") or {}
    return overall.get("auc")


def _versus_aucs(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """{split}_patch_auc_vs_{class}: tumor against each other annotated class, per val/test."""
    columns: dict[str, float | None] = {}
    for split in ("val", "test"):
        versus = (evaluation.get("patch", {}).get(split) or {}).get("versus") or {}
        for name, summary in versus.items():
            column = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
            columns[f"{split}_patch_auc_vs_{column}"] = summary.get("auc")
    return columns


def _benchmark_seconds(folder: Path) -> float | None:
    """Wall time of a round's jobs, from Snakemake's benchmark files (one per job)."""
    files = sorted(folder.glob("*.tsv")) if folder.exists() else []
    if not files:
        return None
    return float(sum(pd.read_csv(f, sep="\t")["s"].iloc[-1] for f in files))


def _finetune_epoch_seconds(encoder: Path) -> float | None:
    """Mean epoch time recorded by the fine-tuning stage inside the next round's encoder file."""
    if not encoder.exists():
        return None
    import torch

    saved = torch.load(encoder, map_location="cpu", weights_only=False)
    seconds = (saved.get("extra") or {}).get("epoch_seconds") or []
    return float(sum(seconds) / len(seconds)) if seconds else None


def round_row(results: Path, round_: int) -> dict[str, Any]:
    folder = results / f"r{round_}"
    mil = _read_json(folder / "mil" / "metrics.json")
    evaluation = _read_json(folder / "eval" / "metrics.json")
    mining = _read_json(folder / "mining" / "summary.json")
    slide = evaluation.get("slide", {})
    extraction_seconds = _benchmark_seconds(results / "benchmarks" / f"r{round_}" / "extract")
    patches = _count_patches(folder / "features")
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
        "finetune_epoch_seconds": _finetune_epoch_seconds(results / f"r{round_ + 1}" / "encoder.pt"),
        "extraction_seconds": extraction_seconds,
        "extraction_patches_per_second": (
            patches / extraction_seconds if extraction_seconds and patches else None
        ),
        "mil_epoch_seconds": (mil.get("timing") or {}).get("epoch_seconds_mean"),
        **_versus_aucs(evaluation),
    }


def _count_patches(features: Path) -> int:
    import h5py

    total = 0
    for path in sorted(features.glob("*.h5")) if features.exists() else []:
        with h5py.File(path, "r") as handle:
            total += int(handle["features"].shape[0])
    return total


def write_report(results: str | os.PathLike[str], rounds: int, out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    results, out_dir = Path(results), Path(out_dir)
    rows = [round_row(results, r) for r in range(rounds + 1)]
    extra = [column for row in rows for column in row if column not in ROUND_COLUMNS]
    table = pd.DataFrame(rows, columns=ROUND_COLUMNS + list(dict.fromkeys(extra)))
    with atomic_path(out_dir / "rounds.csv") as temporary:
        table.to_csv(temporary, index=False)
    last = results / f"r{rounds}" / "eval"
    final = _read_json(last / "metrics.json")
    final["round"] = rounds
    final["rounds_table"] = str(out_dir / "rounds.csv")
    write_json(out_dir / "metrics.json", final)
    with atomic_path(out_dir / "predictions.csv") as temporary:
        shutil.copyfile(last / "predictions.csv", temporary)
    for row in table.to_dict("records"):
        log.info(
            "round %d: val AUC %s, test AUC %s, test patch AUC %s, hard negatives %s",
            row["round"], fmt_metric(row["val_slide_auc"]), fmt_metric(row["test_slide_auc"]),
            fmt_metric(row["test_patch_auc"]), row["hard_negatives"],
        )
    return table
