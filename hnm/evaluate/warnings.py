"""What a run skipped or degraded, gathered where the user looks: results/final/metrics.json
(`warnings`) and the console at the end of the run.

A run can finish with exit status 0 and a worse result than it looks: slides skipped under
on_slide_error: skip, a one-class validation split (threshold 0.5, model chosen on loss), test
slides without a prediction, an undefined test AUC. Each of these is logged by the job that meets
it, but job logs are where nobody looks; these functions collect them from the run's own outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

FAILED_SLIDES = Path("qc") / "failed_slides.tsv"
FINAL_METRICS = Path("final") / "metrics.json"


def read_failures(path: str | os.PathLike[str] | None) -> pd.DataFrame:
    """results/qc/failed_slides.tsv (slide_id, path, error, stage); empty when absent."""
    columns = ["slide_id", "path", "error", "stage"]
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=columns)
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "stage" not in table.columns:  # written before fine-tuning and extraction were listed
        table["stage"] = "tiling"
    return table[columns]


def run_warnings(
    failures: pd.DataFrame,
    mil_metrics: Sequence[dict[str, Any]],
    final_evaluation: dict[str, Any],
) -> list[str]:
    """One sentence per thing skipped or degraded, from the failures table, every round's MIL
    metrics (in round order) and the last round's evaluation metrics."""
    warnings = [
        f"slide '{row.slide_id}' was skipped at {row.stage}: {row.error} ({row.path})"
        for row in failures.itertuples()
    ]
    skipped = set(failures["slide_id"])
    notes: dict[str, list[int]] = {}
    excluded: dict[tuple[str, str, str], list[int]] = {}
    for round_, metrics in enumerate(mil_metrics):
        for note in metrics.get("notes", []):
            notes.setdefault(note, []).append(round_)
        for item in metrics.get("excluded_slides", []):
            if item.get("slide_id") not in skipped:
                key = (str(item.get("slide_id")), str(item.get("split")), str(item.get("reason")))
                excluded.setdefault(key, []).append(round_)
    warnings += [f"MIL ({_rounds(rounds)}): {note}" for note, rounds in notes.items()]
    warnings += [
        f"slide '{slide}' ({split}) was left out of MIL ({_rounds(rounds)}): {reason}"
        for (slide, split, reason), rounds in excluded.items()
    ]
    split = final_evaluation.get("split", "test")
    slide = final_evaluation.get("slide", {})
    not_scored = [s for s in slide.get("not_scored", []) if s not in skipped]
    if not_scored:
        warnings.append(
            f"{len(not_scored)} {split} slide(s) have no prediction and are left out of the "
            f"{split} metrics: {', '.join(not_scored)}"
        )
    if slide.get("n_slides", 0) == 0:
        warnings.append(f"the {split} split has no usable slide: the {split} metrics are empty")
    elif slide.get("auc") is None:
        warnings.append(
            f"the {split} slide AUC is undefined: the usable {split} slides are "
            f"{slide.get('n_positive', 0)} positive and {slide.get('n_negative', 0)} negative"
        )
    return warnings


def end_of_run_summary(results: str | os.PathLike[str] = "results") -> str:
    """What the console says when a run ends: the skipped slides and the other warnings of the
    finished results; empty when there is nothing to say."""
    results = Path(results)
    failures = read_failures(results / FAILED_SLIDES)
    lines = []
    if len(failures):
        lines.append(
            f"{len(failures)} slide(s) were skipped (on_slide_error: skip) and are excluded "
            f"from the results; see {results / FAILED_SLIDES}:"
        )
        lines += [f"  - {r.slide_id}, at {r.stage}: {r.error}" for r in failures.itertuples()]
    metrics = results / FINAL_METRICS
    if metrics.exists():
        others = [
            w
            for w in json.loads(metrics.read_text()).get("warnings", [])
            if not w.startswith("slide '") or " was skipped at " not in w
        ]
        if others:
            lines.append(f"Warnings recorded in {metrics} (`warnings`):")
            lines += [f"  - {w}" for w in others]
    return "\n".join(lines)


def _rounds(rounds: list[int]) -> str:
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds))
