"""A run made with one file per slide, moved into batch files by `hnm regroup`, carries on with
tiling and extraction batched and nothing to make again: same features, same decisions."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hnm.cli import main
from hnm.extract.batches import batches_by_split
from hnm.io.h5io import files_by_slide, open_slide, read_features, read_tiles
from tests.test_workflow_predict import new_slides_sheet
from tests.workflow_runner import FinishedRun, jobs_run, run, wildcards_run, write_config

pytestmark = pytest.mark.workflow

PER_JOB = 4


def test_a_regrouped_run_has_nothing_to_redo(tiny_run: FinishedRun, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(tiny_run.folder, folder)  # copy2: the files keep their modification times
    results = folder / "results"
    slides = sorted(p.stem for p in (results / "tiles").glob("*.h5"))
    before = {s: read_features(results / "r1" / "features" / f"{s}.h5") for s in slides}
    tiles_before = {s: read_tiles(results / "tiles" / f"{s}.h5") for s in slides}
    qc_before = {s: (results / "qc" / f"{s}.png").read_bytes() for s in slides}

    args = ["regroup", "--results", str(results), "--tile-slides-per-job", str(PER_JOB)]
    args += ["--extract-slides-per-job", str(PER_JOB)]
    assert main([*args, "--dry-run"]) == 0
    assert (results / "r1" / "features" / f"{slides[0]}.h5").exists()  # a dry run changes nothing
    assert main(args) == 0

    sheet = pd.read_csv(results / "sheet.tsv", sep="\t")
    batches = batches_by_split(dict(zip(sheet["slide_id"], sheet["split"])), PER_JOB)
    for round_ in (0, 1):
        found = sorted((results / f"r{round_}" / "features" / "batches").glob("*.h5"))
        assert [p.stem for p in found] == sorted(batches)
        assert not list((results / f"r{round_}" / "features").glob("*.h5"))
    features = files_by_slide(sorted((results / "r1/features/batches").glob("*.h5")), "features")
    tiles = files_by_slide(sorted((results / "tiles/batches").glob("*.h5")), "tiles")
    for slide in slides:
        for got, expected in zip(read_features(features[slide]), before[slide]):
            if isinstance(expected, np.ndarray):
                np.testing.assert_array_equal(got, expected)
            else:
                assert got == expected
        assert np.array_equal(read_tiles(tiles[slide])[0], tiles_before[slide][0])
        assert read_tiles(tiles[slide])[1] == tiles_before[slide][1]
        with open_slide(tiles[slide]) as group:
            assert group["qc_png"][:].tobytes() == qc_before[slide]
    assert len(list((results / "qc" / "batches").glob("*.png"))) == len(
        list((results / "tiles" / "batches").glob("*.h5"))
    )

    # The run goes on batched: Snakemake finds nothing to make again but the per-round lists of
    # files, which now name batch files (and re-run nothing: consumers read them as ancient()).
    write_config(
        folder, {"tile": {"slides_per_job": PER_JOB}, "extract": {"slides_per_job": PER_JOB}}
    )
    plan = run(folder, "-n")
    planned = set(re.findall(r"^(\w+)\s+\d+$", plan.stdout, re.M)) - {"total", "job", "count"}
    assert planned == {"file_list"}, plan.stdout[-3000:]
    # A file still to make when the lists are rewritten waits for the next run: Snakemake 9.27
    # does not look at the jobs after a list it rewrites (docs/usage.md, "Runs begun before
    # batch files"). Here the report's sample, which now takes its QC pictures from the batch
    # tiles files and points each slide at its batch's stacked picture.
    (results / "report" / "slides.csv").unlink()
    assert set(jobs_run(run(folder))) == {"file_list"}
    started = time.time()
    result = run(folder)
    jobs = jobs_run(result)
    assert set(jobs) == {"report_sample", "all"}, result.stdout + result.stderr
    index = pd.read_csv(results / "report" / "slides.csv").set_index("slide_id")
    assert sorted(p.stem for p in (results / "tiles/batches").glob("*.h5")) == sorted(batches)
    for batch, members in batches.items():
        for slide in members:
            assert index.loc[slide, "qc"] == f"results/qc/batches/{batch}.png"
    pictures = sorted((results / "report" / "qc").glob("*.jpg"))
    assert pictures
    for picture in pictures:
        assert picture.stat().st_mtime >= started - 1  # made again, from the tiles files
        with Image.open(picture) as small:
            assert max(small.size) <= 480 and small.getextrema()[0][1] > 0

    # Predicting the test slides as new ones, with extraction batched into one file per job,
    # gives the regrouped run's own probabilities.
    final = pd.read_csv(results / "final" / "predictions.csv")
    test = final[final["split"] == "test"].set_index("slide_id")
    sheet = new_slides_sheet(folder, "new.tsv", list(test.index))
    result = run(folder, "predict", "--config", f"predict={{sheet: '{sheet}'}}")
    assert wildcards_run(result, "predict_extract", "batch"), result.stdout[-3000:]
    assert list((results / "predict" / "new" / "features" / "batches").glob("*.h5"))
    predictions = pd.read_csv(results / "predict" / "new" / "predictions.csv")
    predictions = predictions.set_index("slide_id")
    assert sorted(predictions.index) == sorted(test.index)
    np.testing.assert_allclose(
        predictions["prob"], test.loc[predictions.index, "prob"], rtol=0, atol=1e-6
    )
