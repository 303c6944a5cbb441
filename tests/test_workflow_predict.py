"""`snakemake predict` after a tiny training run: the finished model on slides given as unlabelled.

One training run is shared by every case. Predicting the run's own test slides from a sheet without
labels or splits must give the probabilities and decisions the run's evaluation gave them
(results/final/predictions.csv) and the same patch scores, with no training job re-run and no file
of the training run rewritten.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hnm.io.annotations import load_polygons_by_class
from hnm.io.h5io import read_tiles
from hnm.viz.qupath import TILE_CLASS
from tests.workflow_runner import TINY_CONFIG, FinishedRun, _env, command, jobs_run, run

# Predicting is a user's path of its own (rules predict_*): the conda-pins tier runs it too, on the
# CI-sized run it already makes.
pytestmark = [pytest.mark.workflow, pytest.mark.conda_pins]

ROUNDS = TINY_CONFIG["rounds"]
PREDICT_RULES = {
    "predict_sheet",
    "predict_tile",
    "predict_score",
    "predict_heatmaps",
    "predict_qupath",
    "predict",
    "predict_file_list",
}


@pytest.fixture(scope="module")
def trained(tiny_run: FinishedRun) -> Path:
    return tiny_run.folder


def new_slides_sheet(folder: Path, name: str, slides: list[str], mpp: bool = False) -> Path:
    """A sheet of the demo's slides as a user would write it for new ones: no label, no split."""
    sheet = folder / name
    rows = [f"{s}\tresults/demo/slides/{s}.tiff" + ("\t0.5" if mpp else "") for s in slides]
    sheet.write_text("slide_id\tpath" + ("\tmpp" if mpp else "") + "\n" + "\n".join(rows) + "\n")
    return sheet


def training_files(folder: Path) -> dict[str, int]:
    """Every file of the training run outside results/predict/, with its mtime."""
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in (folder / "results").rglob("*")
        if path.is_file() and "predict" not in path.relative_to(folder / "results").parts[:1]
    }


def test_predicting_the_test_slides_unlabelled_gives_the_runs_probabilities(trained: Path) -> None:
    final = pd.read_csv(trained / "results" / "final" / "predictions.csv")
    test = final[final["split"] == "test"].set_index("slide_id")
    sheet = new_slides_sheet(trained, "unlabelled test.tsv", list(test.index))
    before = training_files(trained)

    result = run(trained, "predict", "--config", f"predict={{sheet: '{sheet}'}}")
    ran = set(jobs_run(result))
    assert ran and all(r in PREDICT_RULES or r == "predict_extract" for r in ran), ran
    lists = trained / "results" / "predict" / "unlabelled_test" / "lists"
    assert sorted(p.name for p in lists.iterdir()) == [
        f"{kind}.txt" for kind in ("features", "heatmaps_geojson", "heatmaps_png", "tiles")
    ]
    assert training_files(trained) == before  # nothing of the training run re-made or touched

    out = trained / "results" / "predict" / "unlabelled_test"
    predictions = pd.read_csv(out / "predictions.csv").set_index("slide_id")
    assert sorted(predictions.index) == sorted(test.index)
    np.testing.assert_allclose(
        predictions["prob"], test.loc[predictions.index, "prob"], rtol=0, atol=1e-6
    )
    assert (predictions["predicted"] == test.loc[predictions.index, "predicted"]).all()
    threshold = json.loads((trained / f"results/r{ROUNDS}/mil/metrics.json").read_text())
    assert (predictions["threshold"] == threshold["threshold"]).all()

    # Patch scores as training's own: same columns, same patches, same scores.
    scores = pd.read_parquet(out / "scores.parquet")
    reference = pd.read_parquet(trained / f"results/r{ROUNDS}/mil/scores/test.parquet")
    assert list(scores.columns) == list(reference.columns)
    key = ["slide_id", "idx"]
    merged = scores.merge(reference, on=key, suffixes=("", "_run"), validate="one_to_one")
    assert len(merged) == len(reference) == len(scores)
    for column in ("x", "y", "size"):
        assert (merged[column] == merged[f"{column}_run"]).all(), column
    np.testing.assert_allclose(merged["score"], merged["score_run"], rtol=0, atol=1e-5)

    for slide in test.index:
        coords, _ = read_tiles(out / "tiles" / f"{slide}.h5")
        trained_coords, _ = read_tiles(trained / "results" / "tiles" / f"{slide}.h5")
        assert np.array_equal(coords, trained_coords)
        assert (out / "heatmaps" / f"{slide}.png").stat().st_size > 1000
        tiles = load_polygons_by_class(out / "heatmaps" / f"{slide}.geojson", [TILE_CLASS])
        assert (
            sum(len(polygons) for polygons in tiles.values()) == (scores["slide_id"] == slide).sum()
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_predicted"] == len(test) and summary["excluded_slides"] == []

    # A finished prediction is not redone.
    again = run(trained, "predict", "--config", f"predict={{sheet: '{sheet}'}}")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_second_sheet_goes_to_its_own_folder(trained: Path) -> None:
    """Another sheet (with mpp, a chosen name) neither re-runs nor touches the first's outputs."""
    final = pd.read_csv(trained / "results" / "final" / "predictions.csv")
    val = list(final.loc[final["split"] == "val", "slide_id"])[:1]
    sheet = new_slides_sheet(trained, "second.tsv", val, mpp=True)
    before = {
        str(p): p.stat().st_mtime_ns
        for p in (trained / "results" / "predict").rglob("*")
        if p.is_file()
    }
    run(trained, "predict", "--config", f"predict={{sheet: '{sheet}', name: batch-2}}")
    after = {
        str(p): p.stat().st_mtime_ns
        for p in (trained / "results" / "predict").rglob("*")
        if p.is_file()
    }
    assert {k: after[k] for k in before} == before
    predictions = pd.read_csv(trained / "results" / "predict" / "batch-2" / "predictions.csv")
    assert list(predictions["slide_id"]) == val
    assert 0.0 <= predictions.loc[0, "prob"] <= 1.0


def test_predict_without_a_sheet_says_how_to_give_one(trained: Path) -> None:
    result = subprocess.run(
        command(trained, "-n", "predict"), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert result.returncode != 0
    assert "snakemake predict --config 'predict={sheet:" in result.stdout + result.stderr
