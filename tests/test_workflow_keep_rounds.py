"""extract.keep_rounds end to end on the tiny cohort, rounds 0-2 keeping the latest round's features.

One run keeps every round (the reference). A second run, started from the reference's slides, tiles,
round-0 encoder and round-0 features (hard links, as `hnm compare` shares them), keeps one round: it
is killed with SIGKILL once round 0's features are gone and round 1's are being made, and resumed.
Round 0's and 1's features must then be gone, round 2's there, the reference's round-0 files intact,
the final model the same as the reference's, and Snakemake must find nothing to do. Then a setting
that only the probe reads is changed: the probe of every round must run again, which needs the
removed features, so Snakemake extracts them again, reruns what follows, removes them again, and
the final model is still the reference's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hnm.io.h5io import read_features
from tests.workflow_runner import jobs_run, resume, run, run_and_kill, write_config

pytestmark = pytest.mark.workflow

ROUNDS = {"rounds": 2}
KEEP_ONE = {**ROUNDS, "extract": {"keep_rounds": 1}}
# What the second run starts with from the reference: everything before round-0 MIL training.
SHARED = ("demo", "sheet.tsv", "sheet_eval.tsv", "tiles", "qc", "pretrain", "r0/encoder.pt",
          "r0/features")  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cohort through rounds 0-2, every round's features kept."""
    folder = tmp_path_factory.mktemp("keep_all")
    write_config(folder, ROUNDS)
    run(folder)
    return folder


def share(source: Path, folder: Path) -> None:
    """Start `folder` with hard links to `source`'s SHARED results and Snakemake's record of them
    (results/qc without the failures table, which is made at the end of a run)."""
    for part in SHARED:
        origin, target = source / "results" / part, folder / "results" / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(
                origin,
                target,
                copy_function=os.link,
                ignore=shutil.ignore_patterns("failed_slides.tsv"),
            )
        else:
            os.link(origin, target)
    shutil.copytree(source / ".snakemake" / "metadata", folder / ".snakemake" / "metadata")


def features_of(results: Path, round_: int) -> list[Path]:
    return sorted((results / f"r{round_}" / "features").glob("[!.]*.h5"))


def dry_run(folder: Path) -> str:
    result = run(folder, "-n")
    return result.stdout + result.stderr


def assert_same_final_model(ours: Path, reference: Path) -> None:
    mine = json.loads((ours / "results" / "final" / "metrics.json").read_text())
    theirs = json.loads((reference / "results" / "final" / "metrics.json").read_text())
    assert mine["slide"] == theirs["slide"]
    for split in ("train", "val", "test"):
        scores = f"results/r2/mil/scores/{split}.parquet"
        pd.testing.assert_frame_equal(
            pd.read_parquet(ours / scores), pd.read_parquet(reference / scores)
        )


def test_older_rounds_features_go_and_a_killed_or_changed_run_still_completes(
    tmp_path: Path, reference: Path
) -> None:
    results = tmp_path / "results"
    slides = [p.name for p in features_of(reference / "results", 0)]
    assert len(slides) == 8 and all(len(features_of(reference / "results", r)) == 8 for r in (1, 2))
    share(reference, tmp_path)
    write_config(tmp_path, KEEP_ONE)

    # 1. Killed once round 0's features are gone and round 1's are being written.
    def round0_gone_round1_started() -> bool:
        return not features_of(results, 0) and bool(features_of(results, 1))

    run_and_kill(tmp_path, round0_gone_round1_started)
    result = resume(tmp_path)
    print("jobs after the kill:", jobs_run(result))
    assert jobs_run(result).get("extract_pruned", 0) <= 8  # round 1's unfinished, none of round 0
    assert not features_of(results, 0) and not features_of(results, 1)
    assert [p.name for p in features_of(results, 2)] == slides
    # Removing this run's links left the reference's round-0 files whole.
    for name in slides:
        features, _, _ = read_features(reference / "results" / "r0" / "features" / name)
        assert features.shape[0] > 20 and np.isfinite(features).all()
    assert_same_final_model(tmp_path, reference)
    ours = pd.read_csv(results / "final" / "rounds.csv")
    theirs = pd.read_csv(reference / "results" / "final" / "rounds.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    assert (results / "qc" / "failed_slides.tsv").read_text() == (
        reference / "results" / "qc" / "failed_slides.tsv"
    ).read_text()
    # The removed files are not missing outputs: nothing to do.
    assert "Nothing to be done" in dry_run(tmp_path)

    # 2. A setting only the probe reads: every round's probe reruns and needs its features.
    write_config(tmp_path, {**KEEP_ONE, "evaluate": {"probe_c": 0.5}})
    result = run(tmp_path)
    jobs = jobs_run(result)
    print("jobs after changing evaluate.probe_c:", jobs)
    assert jobs.get("probe") == 3 and jobs.get("extract_pruned") == 16, jobs
    assert not features_of(results, 0) and not features_of(results, 1)
    assert len(features_of(results, 2)) == 8
    probe = json.loads((results / "r0" / "eval" / "probe.json").read_text())
    assert probe["probe"]["reason"] is None
    assert_same_final_model(tmp_path, reference)  # the features made again are the same
    assert "Nothing to be done" in dry_run(tmp_path)
