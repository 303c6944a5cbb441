"""The method works on a small synthetic cohort: a hard-negative round ranks tumor patches better.

The whole chain runs (synth, tiling, round-0 features and MIL, mining, SupCon fine-tuning,
re-extraction, round-1 MIL, final report) on 36 small demo slides. The cohort is the demo's,
scaled down: fewer slides of the same kind, one round instead of two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hnm.io.annotations import load_polygons, patch_labels
from hnm.io.h5io import read_tiles
from tests.workflow_runner import load_test_config, run, write_config

# Measured at this config on a 2-core CPU (seeds 0, 1, 2 of the whole run; test split): round 0
# -> round 1 patch AUC 0.71 -> 0.88 (seed 0). The margin leaves room for other CPUs' float noise.
MARGIN = 0.05

SCIENCE_CONFIG = load_test_config("science")


def _mimic_flags(results: Path, slide_id: str) -> np.ndarray:
    coords, attrs = read_tiles(results / "tiles" / f"{slide_id}.h5")
    annotation = results / "demo" / "annotations" / f"{slide_id}.geojson"
    return patch_labels(load_polygons(annotation, "Mimic"), coords, float(attrs["step_level0"]))


def test_a_hard_negative_round_raises_patch_auc(tmp_path: Path) -> None:
    write_config(tmp_path, base=SCIENCE_CONFIG)
    run(tmp_path, timeout=900)
    results = tmp_path / "results"
    rounds = pd.read_csv(results / "final" / "rounds.csv")
    print(rounds.to_string())
    first, last = rounds.iloc[0], rounds.iloc[-1]
    assert (first["round"], last["round"]) == (0, 1)
    gain = last["test_patch_auc"] - first["test_patch_auc"]
    assert gain > MARGIN, f"test patch AUC rose by {gain:.3f} only"
    # Reported, not asserted: tumor against the mimics alone (0.66 -> 0.69 at this seed).
    assert rounds["test_patch_auc_vs_mimic"].between(0, 1).all()

    # The mechanism: the hard negatives are where the mimics are, far above their share.
    sets = pd.read_parquet(results / "r0" / "mining" / "sets.parquet")
    hard = sets[sets["set"] == "hardneg"]
    sheet = pd.read_csv(results / "sheet.tsv", sep="\t")
    negatives = sheet[(sheet["split"] == "train") & (sheet["label"] == 0)]["slide_id"]
    flags = {slide_id: _mimic_flags(results, slide_id) for slide_id in negatives}
    share = np.concatenate(list(flags.values())).mean()
    in_hard = np.mean([flags[s][i] for s, i in zip(hard["slide_id"], hard["idx"])])
    print(f"mimic patches: {share:.2f} of negative-slide patches, {in_hard:.2f} of hard negatives")
    assert in_hard > 2 * share
