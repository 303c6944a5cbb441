"""The closing lines of a run: final metrics in a few lines and the paths to open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hnm.evaluate.summary import results_summary, shown

METRICS = {
    "round": 2,
    "split": "test",
    "threshold": 0.4321,
    "slide": {
        "auc": 0.875,
        "accuracy": 0.75,
        "f1": 0.8,
        "tp": 4,
        "fp": 2,
        "tn": 2,
        "fn": 0,
        "n_positive": 4,
        "n_negative": 4,
    },
    "patch": {"test": {"overall": {"auc": 0.684}, "versus": {"Mimic": {"auc": 0.568}}}},
}


def test_summary_gives_metrics_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HNM_REPORT", raising=False)
    final = tmp_path / "run" / "results" / "final"
    (final / "heatmaps").mkdir(parents=True)
    (final / "figures").mkdir()
    (final / "metrics.json").write_text(json.dumps(METRICS))
    monkeypatch.chdir(tmp_path / "run")  # what --directory does before the handler runs
    monkeypatch.setenv("PWD", str(tmp_path))  # the user's shell stayed here
    lines = results_summary("results").splitlines()
    assert lines[0] == (
        "Final model (round 2) on the test slides (4 positive, 4 negative), "
        "threshold 0.4321 chosen on val:"
    )
    assert lines[1] == "  slide AUC 0.8750, accuracy 0.7500, F1 0.8000 (TP 4, FP 2, TN 2, FN 0)"
    assert lines[2] == "  patch AUC 0.6840 (tumor vs mimic 0.5680)"
    text = "\n".join(lines)
    # paths open from the user's shell, not from the run folder
    assert "heatmaps: run/results/final/heatmaps" in text
    assert "figures:  run/results/final/figures" in text
    assert "metrics:  run/results/final/metrics.json" in text
    assert "mined:" not in text  # not made: not listed
    assert "snakemake --report report.html" in text
    assert len(lines) <= 10
    monkeypatch.setenv("HNM_REPORT", "results/report.html")  # scripts/demo.sh builds it next
    assert "report:   run/results/report.html" in results_summary("results")


def test_summary_is_empty_without_final_metrics(tmp_path: Path) -> None:
    assert results_summary(tmp_path / "results") == ""


def test_undefined_metrics_read_as_not_available(tmp_path: Path) -> None:
    final = tmp_path / "results" / "final"
    final.mkdir(parents=True)
    (final / "metrics.json").write_text(json.dumps({"split": "test", "slide": {"auc": None}}))
    text = results_summary(tmp_path / "results")
    assert "slide AUC n/a" in text and "patch AUC" not in text


def test_paths_outside_the_shell_folder_are_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PWD", str(tmp_path / "elsewhere"))
    assert shown(tmp_path / "x") == str((tmp_path / "x").resolve())
