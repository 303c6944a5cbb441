"""The real workflow, end to end on a tiny synthetic cohort, and killed (SIGKILL) and resumed.

One uninterrupted run is the reference. A second run is killed four times, during tiling, during
pretraining, during extraction and during fine-tuning, and resumed with the command of docs/usage.md ('Resuming') each
time: finished outputs must not be recomputed, the pretraining and fine-tuning jobs must continue
from their epoch checkpoints, and the final metrics must equal the uninterrupted run's (same seed,
CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hnm.encoders import load_encoder_file
from hnm.io.h5io import read_features, read_tiles
from tests.workflow_runner import (
    TINY_CONFIG,
    FinishedRun,
    jobs_run,
    resume,
    run,
    run_and_kill,
    share_results,
    write_config,
)

pytestmark = pytest.mark.workflow

N_SLIDES = sum(sum(c.values()) for c in TINY_CONFIG["demo"]["slides"].values())


@pytest.fixture(scope="module")
def reference(tiny_run: FinishedRun) -> Path:
    counts = tiny_run.jobs
    assert counts.get("tile") == N_SLIDES and counts.get("finetune") == 1, counts
    assert counts.get("pretrain") == 1, counts
    return tiny_run.folder


@pytest.mark.conda_pins  # the CI-sized run, every stage once: also run at envs/*.yaml's versions
def test_full_chain_writes_every_output(reference: Path) -> None:
    results = reference / "results"
    slides = pd.read_csv(results / "sheet.tsv", sep="\t")
    assert len(slides) == N_SLIDES
    for slide_id in slides["slide_id"]:
        coords, attrs = read_tiles(results / "tiles" / f"{slide_id}.h5")
        assert len(coords) > 20 and not attrs["failed"], slide_id
        assert (results / "qc" / f"{slide_id}.png").stat().st_size > 1000
        for round_ in (0, 1):
            features, feature_coords, _ = read_features(
                results / f"r{round_}" / "features" / f"{slide_id}.h5"
            )
            assert np.array_equal(feature_coords, coords)
            assert np.isfinite(features).all()
    metrics = json.loads((results / "final" / "metrics.json").read_text())
    assert 0.0 <= metrics["slide"]["auc"] <= 1.0
    rounds = pd.read_csv(results / "final" / "rounds.csv")
    assert list(rounds["round"]) == [0, 1]
    assert rounds.loc[0, "hard_negatives"] > 0
    # Feature quality, since the demo slides are annotated: each round's linear probe and its MIL
    # trained again at evaluate.mil_seeds, in rounds.csv.
    for round_ in (0, 1):
        quality = json.loads((results / f"r{round_}" / "eval" / "probe.json").read_text())
        assert quality["probe"]["reason"] is None, quality["probe"]
        assert quality["mil_seeds"]["seeds"] == [TINY_CONFIG.get("seed", 0), 1, 2]
    for column in (
        "probe_test_auc",
        "probe_test_auc_vs_mimic",
        "mil_seeds_test_patch_auc_mean",
        "mil_seeds_test_patch_auc_sd",
        "mil_seeds_test_slide_auc_mean",
        "mil_seeds_test_slide_auc_sd",
    ):
        assert rounds[column].between(0.0, 1.0).all(), (column, list(rounds[column]))
    # Rerunning a finished workflow does nothing.
    assert "Nothing to be done" in run(reference).stderr


def test_killed_four_times_resumes_to_the_same_result(tmp_path: Path, reference: Path) -> None:
    results = tmp_path / "results"
    write_config(tmp_path)
    # The reference run's rendered slides and sheets: the kills start at tiling.
    share_results(reference, tmp_path, ("demo", "sheet.tsv", "sheet_eval.tsv"))

    def count(folder: Path) -> int:
        return len(list(folder.glob("[!.]*.h5"))) if folder.exists() else 0

    # 1. During tiling. Outputs present 2 s before the kill had time to be booked (and touched) as
    # finished by Snakemake; one that appeared in the last instant may be rerun, which is correct.
    snapshot: dict[str, int] = {}

    def finished_before_kill(folder: Path) -> bool:
        if count(folder) < 2:
            return False
        snapshot.update({p.name: 0 for p in folder.glob("[!.]*.h5")})
        return True

    def check_resume(folder: Path, rule: str, target: str) -> None:
        assert len(snapshot) < N_SLIDES, f"{rule} finished before the kill"
        snapshot.update({name: (folder / name).stat().st_mtime_ns for name in snapshot})
        result = resume(tmp_path, target)
        rerun = jobs_run(result).get(rule, 0)
        print(f"{rule} jobs rerun after the kill: {rerun} of {N_SLIDES} ({jobs_run(result)})")
        assert 0 < rerun <= N_SLIDES - len(snapshot)
        for name, mtime in snapshot.items():
            assert (folder / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
        assert count(folder) == N_SLIDES

    run_and_kill(tmp_path, lambda: finished_before_kill(results / "tiles"), grace=2.0)
    check_resume(results / "tiles", "tile", "tiles")

    # 2. During pretraining, once its first epoch checkpoint is on disk.
    pretrain_state = results / "checkpoints" / "r0" / "pretrain" / "state.pt"
    run_and_kill(tmp_path, pretrain_state.exists)
    assert not (results / "r0" / "encoder.pt").exists(), "pretraining finished before the kill"
    result = resume(tmp_path, "results/r0/encoder.pt")
    print("jobs rerun after the pretraining kill:", jobs_run(result))
    assert jobs_run(result).get("tile", 0) == 0 and jobs_run(result).get("pretrain") == 1
    assert jobs_run(result).get("init_encoder", 0) == 0
    log = (results / "logs" / "r0" / "pretrain.log").read_text()
    assert "resuming from checkpoint" in log, log[-2000:]
    ours, our_meta = load_encoder_file(results / "r0" / "encoder.pt")
    theirs, their_meta = load_encoder_file(reference / "results" / "r0" / "encoder.pt")
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[name]), f"pretrained {name} differs"
    assert our_meta.extra["pretrain"]["losses"] == their_meta.extra["pretrain"]["losses"]

    # 3. During round-0 extraction.
    snapshot.clear()
    run_and_kill(tmp_path, lambda: finished_before_kill(results / "r0" / "features"), grace=2.0)
    check_resume(results / "r0" / "features", "extract", "features_round0")

    # 4. During fine-tuning, once its first epoch checkpoint is on disk.
    checkpoint = results / "checkpoints" / "r1" / "finetune" / "state.pt"
    run_and_kill(tmp_path, checkpoint.exists)
    assert not (results / "r1" / "encoder.pt").exists(), "fine-tuning finished before the kill"
    result = resume(tmp_path)
    print("jobs rerun after the fine-tuning kill:", jobs_run(result))
    assert jobs_run(result).get("tile", 0) == 0 and jobs_run(result).get("finetune") == 1
    log = (results / "logs" / "r1" / "finetune.log").read_text()
    assert "resuming from checkpoint" in log, log[-2000:]

    ours = json.loads((results / "final" / "metrics.json").read_text())
    theirs = json.loads((reference / "results" / "final" / "metrics.json").read_text())
    assert ours["slide"] == theirs["slide"]
    for split in ("train", "val", "test"):
        a = pd.read_parquet(results / "r1" / "mil" / "scores" / f"{split}.parquet")
        b = pd.read_parquet(reference / "results" / "r1" / "mil" / "scores" / f"{split}.parquet")
        pd.testing.assert_frame_equal(a, b)
