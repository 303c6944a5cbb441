"""The comparison's tables, read from each run's own files.

Three tables:
- runs.csv: one row per method, seed and round: the run's rounds.csv metrics, the fine-tuning time
  that made the round's encoder, and what the round mined, measured against the patch truth of
  the annotations (share of tumor among the pseudo-positives and among the curriculum positives
  that fine-tuning used, share of mimics among the hard negatives), beside those classes' share
  of all training patches of the slides mined from.
- table.csv: per method and round, the mean and standard deviation over seeds.
- paired.csv: per method, its final round against the reference method's final round at the same
  seed: the per-seed differences, their mean, 95% intervals from a bootstrap over seeds and test
  slides and from one over test slides alone, a sign-flip p and a verdict (hnm.compare.paired).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hnm.compare.paired import paired_differences
from hnm.compare.spec import CompareSpec
from hnm.core.errors import HnmError
from hnm.evaluate.metrics import roc_auc
from hnm.io.annotations import load_polygons_by_class, patch_labels
from hnm.io.h5io import SlideData, files_in_folder, read_tiles, slide_file
from hnm.mine.health import mining_health

METRICS = (
    "test_slide_auc",
    "test_accuracy",
    "test_patch_auc",
    "test_patch_auc_vs_mimic",
    "val_patch_auc",
    "probe_test_auc",
    "probe_test_auc_vs_mimic",
    "mil_seeds_test_patch_auc_mean",
    "mil_seeds_test_patch_auc_sd",
    "mil_seeds_test_slide_auc_mean",
    "finetune_seconds_total",
    "finetune_steps_total",
    "pseudo_positive_tumor_share",
    "curriculum_tumor_share",
    "hard_negative_mimic_share",
    "pseudo_positive_slides",
    "pseudo_positive_top_slide_share",
    "pos_overlap_previous",
    "hardneg_overlap_previous",
)
HEALTH = {
    "pseudo_positive_slides",
    "pseudo_positive_top_slide_share",
    "pseudo_positive_fraction",
    "pos_overlap_previous",
    "hardneg_overlap_previous",
}


class PatchTruth:
    """Tumor and other-class flags of every patch of the cohort's annotated slides, read once."""

    def __init__(self, results: Path, classes: tuple[str, str]) -> None:
        self.results = results
        self.classes = classes
        self.sheet = pd.read_csv(results / "sheet_eval.tsv", sep="\t")
        self._flags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tiles: dict[str, SlideData] | None = None

    def flags(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        if slide_id not in self._flags:
            row = self.sheet.loc[self.sheet["slide_id"] == slide_id].iloc[0]
            annotation = row.get("annotation")
            if not isinstance(annotation, str) or not annotation:
                raise HnmError(
                    f"slide '{slide_id}' has no annotation in {self.results / 'sheet_eval.tsv'}; the "
                    "comparison's patch metrics need patch truth for every slide"
                )
            if self._tiles is None:
                self._tiles = files_in_folder(self.results / "tiles", "tiles")
            coords, attrs = read_tiles(slide_file(self._tiles, slide_id, "tiles"))
            path = Path(annotation)
            path = path if path.is_absolute() else self.results.parent / path
            by_class = load_polygons_by_class(path, list(self.classes))
            step = float(attrs["step_level0"])
            self._flags[slide_id] = tuple(  # type: ignore[assignment]
                np.asarray(patch_labels(by_class[name], coords, step), bool)
                for name in self.classes
            )
        return self._flags[slide_id]

    def slides(self, split: str, label: int | None = None) -> list[str]:
        rows = self.sheet[self.sheet["split"] == split]
        if label is not None:
            rows = rows[rows["label"] == label]
        return [str(s) for s in rows["slide_id"]]

    def share(self, slides: list[str], which: int) -> float:
        flags = [self.flags(s)[which] for s in slides]
        return float(np.concatenate(flags).mean()) if flags else float("nan")

    def share_in(self, chosen: pd.DataFrame, which: int) -> float:
        if chosen.empty:
            return float("nan")
        hits = [
            self.flags(str(s))[which][int(i)] for s, i in zip(chosen["slide_id"], chosen["idx"])
        ]
        return float(np.mean(hits))


def run_rows(results: Path, method: str, seed: int, truth: PatchTruth) -> list[dict[str, Any]]:
    """One row per round of one finished run."""
    rounds = pd.read_csv(results / "final" / "rounds.csv")
    rows = []
    total, steps = 0.0, 0
    for record in rounds.to_dict("records"):
        round_ = int(record["round"])
        seconds = _finetune_seconds(results, round_)
        total += seconds
        steps += _finetune_steps(results, round_)
        row = {
            "method": method,
            "seed": seed,
            **{k: v for k, v in record.items() if k not in HEALTH},
        }
        row["finetune_seconds"] = seconds
        row["finetune_seconds_total"] = total
        row["finetune_steps_total"] = steps
        row.update(_mining_row(results, round_, truth))
        rows.append(row)
    return rows


def _finetune_seconds(results: Path, round_: int) -> float:
    """Wall time of the fine-tuning job that made round `round_`'s encoder (0 for round 0)."""
    if round_ == 0:
        return 0.0
    benchmark = results / "benchmarks" / f"r{round_}" / "finetune.tsv"
    return float(pd.read_csv(benchmark, sep="\t")["s"].iloc[0])


def _finetune_steps(results: Path, round_: int) -> int:
    """SupCon steps of the fine-tuning that made round `round_`'s encoder: the work, which unlike
    the wall time does not depend on what else the machine was doing."""
    if round_ == 0:
        return 0
    import torch

    saved = torch.load(
        results / f"r{round_}" / "encoder.pt", map_location="cpu", weights_only=False
    )
    extra = saved.get("extra") or {}
    return int(extra.get("steps_per_epoch", 0)) * len(extra.get("losses") or [])


def _mining_row(results: Path, round_: int, truth: PatchTruth) -> dict[str, Any]:
    sets_path = results / f"r{round_}" / "mining" / "sets.parquet"
    if not sets_path.exists():  # the last round mines nothing
        return {}
    sets = pd.read_parquet(sets_path)
    summary = json.loads((results / f"r{round_}" / "mining" / "summary.json").read_text())
    previous_path = results / f"r{round_ - 1}" / "mining" / "sets.parquet"
    previous = pd.read_parquet(previous_path) if round_ > 0 else None
    positives = truth.slides("train", 1)
    negatives = truth.slides("train", 0)
    return {
        "sets_refreshed": bool(summary.get("refreshed", True)),
        # Recomputed from the sets, so runs made before rounds.csv carried them have them too.
        **mining_health(sets, summary["slides"], previous),
        "tumor_share_of_positive_slides": truth.share(positives, 0),
        "pseudo_positive_tumor_share": truth.share_in(sets[sets["set"] == "pos"], 0),
        "curriculum_tumor_share": truth.share_in(sets[sets["set"] == "curriculum"], 0),
        "mimic_share_of_negative_slides": truth.share(negatives, 1),
        "hard_negative_mimic_share": truth.share_in(sets[sets["set"] == "hardneg"], 1),
    }


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per method and round (methods in spec order)."""
    columns = [c for c in METRICS if c in runs.columns]
    grouped = runs.groupby(["method", "round"], sort=False)[columns]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    table["seeds"] = grouped.size()
    ordered = ["seeds"] + [f"{c}_{s}" for c in columns for s in ("mean", "sd")]
    return table[ordered].reset_index()


class FinalScores:
    """A finished run's final-round test patch scores and slide probabilities."""

    def __init__(self, results: Path, truth: PatchTruth) -> None:
        rounds = pd.read_csv(results / "final" / "rounds.csv")
        last = int(rounds["round"].iloc[-1])
        scores = pd.read_parquet(results / f"r{last}" / "mil" / "scores" / "test.parquet")
        self.patches: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for slide_id, group in scores.groupby("slide_id", sort=False):
            tumor, other = truth.flags(str(slide_id))
            idx = group["idx"].to_numpy(np.int64)
            self.patches[str(slide_id)] = (group["score"].to_numpy(float), tumor[idx], other[idx])
        predictions = pd.read_csv(results / "final" / "predictions.csv")
        test = predictions[predictions["split"] == "test"]
        self.slides = {
            str(s): (float(p), int(y))
            for s, p, y in zip(test["slide_id"], test["prob"], test["label"])
        }

    def metric(self, name: str, slides: list[str]) -> float:
        if name == "test_slide_auc":
            pairs = [self.slides[s] for s in slides if s in self.slides]
            return _auc([y for _, y in pairs], [p for p, _ in pairs])
        parts = [self.patches[s] for s in slides if s in self.patches]
        score = np.concatenate([p[0] for p in parts])
        tumor = np.concatenate([p[1] for p in parts])
        if name == "test_patch_auc":
            return _auc(tumor, score)
        pair = tumor | (np.concatenate([p[2] for p in parts]) & ~tumor)
        return _auc(tumor[pair], score[pair])


def _auc(labels: Any, scores: Any) -> float:
    value = roc_auc(labels, scores) if len(labels) else None
    return float("nan") if value is None else float(value)


def collect(
    spec: CompareSpec, out: Path, progress: Callable[[str], None] = lambda _: None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, table, paired) for a finished comparison folder."""
    tumor = spec.cohort.get("evaluate", {}).get("annotation_class", "Tumor")
    truth = PatchTruth(out / "cohort" / "results", (tumor, spec.versus_class))
    rows: list[dict[str, Any]] = []
    final: dict[tuple[str, int], FinalScores] = {}
    for seed in spec.seeds:
        for method in spec.methods:
            results = out / f"seed{seed}" / method / "results"
            progress(f"reading {results}")
            rows.extend(run_rows(results, method, seed, truth))
            final[method, seed] = FinalScores(results, truth)
    runs = pd.DataFrame(rows)
    paired = paired_differences(spec, final, truth.slides("test"), spec.bootstrap)
    return runs, summarise(runs), paired
