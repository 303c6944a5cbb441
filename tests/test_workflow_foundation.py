"""config/foundation.yaml: a foundation-model preset frozen (rounds 0) or with LoRA adapters.

The dry runs plan the overlay as a user would layer it. The end-to-end run takes the tiny test
preset (the published presets' code path: a ViT with registers, packed SwiGLU and CLS + mean
patch output, 32 px input) through the tiny cohort with adapters, from a weights file written in
the timm layout, and then predicts the test slides as new ones.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hnm.encoders.base_weights import build_vit
from hnm.encoders.presets import get_preset
from hnm.encoders.safetensors_io import write_safetensors
from hnm.io.h5io import read_features
from tests.test_workflow_predict import PREDICT_RULES, new_slides_sheet
from tests.test_workflow_static import planned_jobs, snakemake
from tests.workflow_runner import TINY_CONFIG, deep_update, jobs_run, run, write_config

REPO = Path(__file__).resolve().parents[1]
FOUNDATION = yaml.safe_load((REPO / "config" / "foundation.yaml").read_text())


def plan(tmp_path: Path, *config: str) -> subprocess.CompletedProcess[str]:
    files = [str(REPO / "config" / name) for name in ("config.yaml", "foundation.yaml")]
    return snakemake(
        tmp_path, "-n", "--configfile", *files, *(["--config", *config] if config else [])
    )


def test_the_overlay_without_weights_says_which_file_to_download(tmp_path: Path) -> None:
    result = plan(tmp_path)
    assert result.returncode != 0
    assert "encoder.preset uni needs its published weights in encoder.weights: download " in (
        result.stdout + result.stderr
    )
    assert "huggingface.co/MahmoodLab/UNI" in result.stdout + result.stderr


@pytest.mark.parametrize("rounds", [0, 2], ids=["frozen", "adapters"])
def test_the_overlay_plans_frozen_or_with_adapters(tmp_path: Path, rounds: int) -> None:
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"")  # a dry run only needs the file to exist
    result = plan(tmp_path, f"encoder={{preset: uni, weights: '{weights}'}}", f"rounds={rounds}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs.get("init_encoder") == 1 and "pretrain" not in jobs  # no SimCLR for presets
    assert jobs.get("finetune", 0) == rounds
    starts = [line for line in result.stderr.splitlines() if "round 0 starts" in line]
    assert len(starts) == 1 and f"uni encoder weights in {weights}" in starts[0]


@pytest.mark.workflow
def test_tiny_preset_with_adapters_end_to_end(tmp_path: Path) -> None:
    preset = get_preset("vit_tiny_test")
    weights = tmp_path / "weights" / "vit_tiny_test.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        write_safetensors(weights, build_vit(preset.vit).state_dict())
    weights_sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    config = deep_update(
        deep_update(FOUNDATION, TINY_CONFIG),
        {
            "rounds": 1,
            "encoder": {"preset": "vit_tiny_test", "weights": str(weights)},
            "tile": {"patch_size": 32, "target_mpp": 2.0},
            "extract": {"batch_size": 64},
            "resources": {
                "extract": {"mem_mb": 2000, "runtime": 30, "threads": 1},
                "finetune": {"mem_mb": 2000, "runtime": 30, "threads": 1},
            },
        },
    )
    write_config(tmp_path, base=config)
    jobs = jobs_run(run(tmp_path))
    assert "pretrain" not in jobs and jobs.get("finetune") == 1, jobs
    results = tmp_path / "results"

    # Round 1's features come from the adapted encoder: same width, other values.
    slide = sorted((results / "r0" / "features").glob("*.h5"))[0].name
    r0, coords0, attrs0 = read_features(results / "r0" / "features" / slide)
    r1, coords1, attrs1 = read_features(results / "r1" / "features" / slide)
    assert r0.shape == r1.shape == (len(coords0), preset.feature_dim)
    assert np.array_equal(coords0, coords1) and not np.allclose(r0, r1)
    assert attrs0["weights_sha256"] != attrs1["weights_sha256"]

    # The base weights are untouched, and each encoder file names them instead of holding them.
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == weights_sha
    for round_ in (0, 1):
        path = results / f"r{round_}" / "encoder.pt"
        payload = torch.load(path, weights_only=True)
        assert payload["backbone"] == {} and payload["base"]["sha256"] == weights_sha
        assert payload["preset"] == "vit_tiny_test"
    payload = torch.load(results / "r1" / "encoder.pt", weights_only=True)
    assert payload["adapters"]["config"]["targets"] == ["qkv", "proj"]
    adapter_values = sum(t.numel() for t in payload["adapters"]["state"].values())
    assert adapter_values == 3 * (8 * 48 + 144 * 8 + 8 * 48 + 48 * 8)  # (A, B) of qkv, proj
    assert any(torch.count_nonzero(t) for k, t in payload["adapters"]["state"].items() if "up" in k)

    # Predicting the test slides as new ones gives the evaluation's probabilities.
    final = pd.read_csv(results / "final" / "predictions.csv")
    test = final[final["split"] == "test"].set_index("slide_id")
    sheet = new_slides_sheet(tmp_path, "new.tsv", list(test.index))
    ran = set(jobs_run(run(tmp_path, "predict", "--config", f"predict={{sheet: '{sheet}'}}")))
    assert ran and all(r in PREDICT_RULES or r == "predict_extract" for r in ran), ran
    predictions = pd.read_csv(results / "predict" / "new" / "predictions.csv")
    predictions = predictions.set_index("slide_id")
    np.testing.assert_allclose(
        predictions["prob"], test.loc[predictions.index, "prob"], rtol=0, atol=1e-6
    )
