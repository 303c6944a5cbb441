"""The few lines a finished run ends on: the final test metrics and where the results are.

Snakemake's own closing line ("N of N steps (100%) done") says nothing about the result, and a new
user does not yet know the layout of results/. The Snakefile's onsuccess handler prints these lines
so the console ends on the numbers and the paths to open, whatever config or folder the run used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hnm.core.formatting import fmt_metric

FINAL = Path("final")
# Set by scripts/demo.sh, which builds the report once the run is done: name it rather than the
# command that builds it.
REPORT_AFTER_RUN = "HNM_REPORT"


def shown(path: Path) -> str:
    """`path` as the user can open it from the shell they started in.

    Snakemake changes into `--directory` before the handler runs, so a relative path would point
    into the wrong folder; the shell's own folder is still in $PWD (a chdir does not change it).
    """
    absolute = path.resolve()
    start = Path(os.environ.get("PWD", os.getcwd())).resolve()
    try:
        return str(absolute.relative_to(start))
    except ValueError:
        return str(absolute)


def metric_lines(metrics: dict[str, Any]) -> list[str]:
    """Slide metrics at the val-chosen threshold and the patch AUCs, in three lines."""
    split = metrics.get("split", "test")
    slide = metrics.get("slide", {})
    threshold = metrics.get("threshold")
    lines = [
        f"Final model (round {metrics.get('round', '?')}) on the {split} slides "
        f"({slide.get('n_positive', 0)} positive, {slide.get('n_negative', 0)} negative), "
        f"threshold {fmt_metric(threshold)} chosen on val:",
        f"  slide AUC {fmt_metric(slide.get('auc'))}, accuracy {fmt_metric(slide.get('accuracy'))}, "
        f"F1 {fmt_metric(slide.get('f1'))} (TP {slide.get('tp', 0)}, FP {slide.get('fp', 0)}, "
        f"TN {slide.get('tn', 0)}, FN {slide.get('fn', 0)})",
    ]
    patch = metrics.get("patch", {}).get(split, {})
    if patch.get("overall", {}).get("auc") is not None:
        versus = [
            f"tumor vs {name.lower()} {fmt_metric(values.get('auc'))}"
            for name, values in patch.get("versus", {}).items()
        ]
        lines.append(
            f"  patch AUC {fmt_metric(patch['overall']['auc'])}"
            + (f" ({', '.join(versus)})" if versus else "")
        )
    return lines


def path_lines(results: Path) -> list[str]:
    """Where to look next; only folders and files the run made."""
    final = results / FINAL
    places = [
        ("metrics", final / "metrics.json", "per round: rounds.csv; per slide: predictions.csv"),
        ("heatmaps", final / "heatmaps", "PNG per val/test slide, QuPath GeoJSON per slide"),
        ("figures", final / "figures", "ROC, per-round metrics, confusion matrix, losses"),
        ("mined", final / "mined", "what each round mined"),
    ]
    lines = [
        f"  {name + ':':<10}{shown(path)}  ({what})" for name, path, what in places if path.exists()
    ]
    report = os.environ.get(REPORT_AFTER_RUN)
    if report:
        lines.append(
            f"  {'report:':<10}{shown(Path(report))}  (one HTML file of all the above; written after this)"
        )
    else:
        lines.append(
            f"  {'report:':<10}snakemake --report report.html  (with this run's "
            "--configfile/--config; one HTML file of all the above)"
        )
    return lines


def results_summary(results: str | os.PathLike[str] = "results") -> str:
    """The closing lines of a run; empty when the run made no final metrics (a partial target)."""
    results = Path(results)
    metrics_file = results / FINAL / "metrics.json"
    if not metrics_file.exists():
        return ""
    metrics = json.loads(metrics_file.read_text())
    return "\n".join([*metric_lines(metrics), "Results:", *path_lines(results)])
