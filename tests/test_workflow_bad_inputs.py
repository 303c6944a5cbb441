"""Bad input at the workflow level, on one shared tiny run (tests/odd_cohort.py):

- hostile names: the sheet, the slides, the annotations and the run folder carry spaces,
  parentheses, quotes, `$`, backticks and non-ASCII letters; the run finishes and a slide named
  `x$(touch PWNED).tiff` touches nothing (issue 13, defect 1);
- a slide that tiles but cannot be decoded at extraction, with on_slide_error: skip, does not stop
  the run, does not cost the other slides of its extraction job their features, and is listed in
  results/qc/failed_slides.tsv with its reason (defect 2);
- what was skipped is said at the end of the run and in results/final/metrics.json (defects 3, 8);
- an annotation changed in place or moved in the sheet re-runs evaluation and nothing upstream
  (defect 4).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from hnm.io.h5io import files_in_folder, read_features
from tests.odd_cohort import CORRUPT, PWNED, ROWS, TILING, rewrite_annotation, write_cohort
from tests.workflow_runner import REPO, TINY_CONFIG, jobs_run, run, write_config

pytestmark = pytest.mark.workflow

RUN_FOLDER = "run 'o' \"d\" $(touch PWNED) `touch PWNED` (ü)"
# Only these may run after an annotation changes: the evaluation sheet, evaluation, the report,
# and the pictures that draw the annotations or patch truth (heatmap outlines, patch ROC, the
# galleries' tumor/mimic marks, the report's sample of them); nothing that trains.
EVALUATION_RULES = {
    "eval_sheet",
    "evaluate",
    "probe",  # feature quality is scored against the annotations too
    "report",
    "all",
    "figures",
    "heatmaps",
    "mined",
    "report_sample",
}


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(run folder, sheet, console output) of one finished run on the odd cohort."""
    root = tmp_path_factory.mktemp("odd")
    sheet = write_cohort(root)
    folder = root / RUN_FOLDER
    folder.mkdir()
    settings = {
        "sheet": str(sheet),
        "tile": {**TILING, "on_slide_error": "skip"},
        # Every slide in one extraction job, so the corrupt one shares it with the others.
        "extract": {**TINY_CONFIG["extract"], "slides_per_job": 16, "on_slide_error": "skip"},
        "mil": {"epochs": 4, "checkpoint_every": 2},
        "finetune": {**TINY_CONFIG["finetune"], "epochs_per_round": 2, "on_slide_error": "skip"},
        "pretrain": {**TINY_CONFIG["pretrain"], "on_slide_error": "skip"},
        # The synthesised annotations also outline the tissue.
        "evaluate": {"versus_classes": ["Mimic", "Tissue"]},
    }
    write_config(folder, settings)
    result = run(folder)
    return folder, sheet, result.stdout + result.stderr


def test_hostile_names_finish_and_touch_nothing(odd_run: tuple[Path, Path, str]) -> None:
    folder, sheet, _ = odd_run
    assert (folder / "results" / "final" / "metrics.json").exists()
    for where in (sheet.parent.parent, REPO, Path.cwd()):
        assert not list(where.rglob(PWNED)), f"a slide name ran a command in {where}"
    rows = pd.read_csv(folder / "results" / "sheet.tsv", sep="\t")
    assert sorted(rows["slide_id"]) == sorted(row[0] for row in ROWS)


def test_undecodable_slide_is_skipped_without_costing_its_batch(
    odd_run: tuple[Path, Path, str],
) -> None:
    folder, _, _ = odd_run
    results = folder / "results"
    for round_ in (0, 1):
        # one features file per job of 16 slides, a group per slide (hnm.io.h5io)
        found = files_in_folder(results / f"r{round_}" / "features", "features")
        assert {p.path.parent.name for p in found.values()} == {"batches"}
        for slide_id, *_ in ROWS:
            features, _, attrs = read_features(found[slide_id])
            if slide_id == CORRUPT:
                assert attrs["failed"] and len(features) == 0
            else:
                assert not attrs["failed"] and len(features) > 10, slide_id
    failed = pd.read_csv(results / "qc" / "failed_slides.tsv", sep="\t", keep_default_na=False)
    assert list(failed["slide_id"]) == [CORRUPT]
    row = failed.iloc[0]
    assert row["stage"] == "extraction (rounds 0, 1)"
    assert "decoding JPEG tiles failed" in row["error"] and "corrupt level 0" in row["path"]
    assert "on_slide_error" not in row["error"]
    assert f"slide '{CORRUPT}'" not in row["error"]  # the reason, not a nested error message


def test_skipped_slides_are_said_at_the_end_and_in_the_metrics(
    odd_run: tuple[Path, Path, str],
) -> None:
    folder, _, console = odd_run
    metrics = json.loads((folder / "results" / "final" / "metrics.json").read_text())
    warnings = metrics["warnings"]
    assert any(CORRUPT in w and "extraction" in w for w in warnings), warnings
    tail = console[console.rindex("steps (100%) done") :]
    assert "1 slide(s) were skipped" in tail and CORRUPT in tail and "failed_slides.tsv" in tail


def test_changed_annotation_reruns_evaluation_only(odd_run: tuple[Path, Path, str]) -> None:
    folder, sheet, _ = odd_run
    test_rows = [row for row in ROWS if row[3] == "test"]
    annotation = sheet.parent / f"{Path(test_rows[0][1]).stem} 'ann' (1).geojson"

    def scheduled() -> dict[str, int]:
        result = run(folder, "-n")
        return jobs_run(result)

    assert scheduled() == {}
    rewrite_annotation(annotation)  # edited in place
    jobs = scheduled()
    assert set(jobs) == EVALUATION_RULES, jobs
    moved = annotation.with_name("moved (é).geojson")  # the path changed in the sheet
    shutil.copy(annotation, moved)
    sheet.write_text(sheet.read_text().replace(annotation.name, moved.name))
    jobs = scheduled()
    assert set(jobs) == EVALUATION_RULES, jobs


def test_cohort_helper_names_are_really_hostile() -> None:
    """The names must hold what the workflow test claims they do (a guard on the fixture)."""
    names = RUN_FOLDER + "".join(row[1] for row in ROWS)
    for character in " ()'\"$`éü":
        assert character in names, character
