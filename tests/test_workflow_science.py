"""The mining step does what the method relies on, on a small synthetic cohort.

The whole chain runs (synth, tiling, round-0 features and MIL, mining, SupCon fine-tuning,
re-extraction, round-1 MIL, final report) on 36 small demo slides. The cohort is the demo's,
scaled down: fewer slides of the same kind, one round instead of two.

What is asserted is the mechanism, exactly: the pseudo-positives are the positive slides' patches
the round-0 MIL scores above eta, and the hard negatives are the negative slides' patches it scores
at or above the mined threshold; and both rounds' MILs rank tumor patches above the rest.

Where those sets fall (tumor among the pseudo-positives, mimics among the hard negatives) is
printed, not asserted: it depends on what one round-0 MIL on 18 training slides latched onto. With
the default `reproducible: true` the run is the same on every machine, and at seed 0 the
pseudo-positives are 0.11 tumor against 0.13 of the positive slides' patches: not enriched (before
that setting, other CPUs gave 0.27 and 0.24, so an earlier version of this test asserted 1.5 x).
Enrichment is a claim about means over seeds, measured by `hnm compare` (its
pseudo_positive_tumor_share column, docs/comparison.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hnm.io.annotations import load_polygons, patch_labels
from hnm.io.h5io import read_tiles
from tests.workflow_runner import load_test_config, run, write_config

SCIENCE_CONFIG = load_test_config("science")
ETA = 0.3  # mine.eta, config/config.yaml


def _region_flags(results: Path, slide_id: str, region: str) -> np.ndarray:
    coords, attrs = read_tiles(results / "tiles" / f"{slide_id}.h5")
    annotation = results / "demo" / "annotations" / f"{slide_id}.geojson"
    return patch_labels(load_polygons(annotation, region), coords, float(attrs["step_level0"]))


def _enrichment(results: Path, sets: pd.DataFrame, slides: pd.Series, name: str, region: str):
    """(share of `region` among the slides' patches, share of it in the mined set `name`)."""
    flags = {slide_id: _region_flags(results, slide_id, region) for slide_id in slides}
    chosen = sets[(sets["set"] == name) & sets["slide_id"].isin(flags)]
    share = np.concatenate(list(flags.values())).mean()
    in_set = np.mean([flags[s][i] for s, i in zip(chosen["slide_id"], chosen["idx"])])
    print(f"{region}: {share:.2f} of the slides' patches, {in_set:.2f} of set {name}")
    return share, in_set


pytestmark = pytest.mark.workflow


def test_mining_takes_the_patches_the_round0_mil_scores_and_tumor_ranks_first(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, base=SCIENCE_CONFIG)
    run(tmp_path, timeout=900)
    results = tmp_path / "results"
    rounds = pd.read_csv(results / "final" / "rounds.csv")
    print(rounds.to_string())
    assert list(rounds["round"]) == [0, 1]
    # The fine-tuned round still ranks tumor above the rest; by how much is the comparison's job.
    assert (rounds["test_patch_auc"] > 0.5).all()
    assert rounds["test_patch_auc_vs_mimic"].between(0, 1).all()

    sets = pd.read_parquet(results / "r0" / "mining" / "sets.parquet")
    sheet = pd.read_csv(results / "sheet.tsv", sep="\t")
    train = sheet[sheet["split"] == "train"]
    positives, negatives = train[train["label"] == 1], train[train["label"] == 0]
    scores = pd.read_parquet(results / "r0" / "mil" / "scores" / "train.parquet")
    # Pseudo-positives are the positive slides' patches the round-0 MIL scored above eta, all of
    # them; hard negatives the negative slides' patches it scored at or above tau, all of them.
    # Where both fall is printed (see the module docstring for why it is not asserted).
    positive_scores = scores[scores["slide_id"].isin(positives["slide_id"])]
    above_eta = positive_scores[positive_scores["score"] > ETA]
    pseudo = sets[sets["set"] == "pos"]
    assert set(zip(pseudo["slide_id"], pseudo["idx"])) == set(
        zip(above_eta["slide_id"], above_eta["idx"])
    )
    _enrichment(results, sets, positives["slide_id"], "pos", "Tumor")
    tau = json.loads((results / "r0" / "mining" / "summary.json").read_text())["tau_hardneg"]
    scores = scores[scores["slide_id"].isin(negatives["slide_id"])]
    scored_above = scores[scores["score"] >= tau]
    above = set(zip(scored_above["slide_id"], scored_above["idx"]))
    hard = sets[sets["set"] == "hardneg"]
    assert above and set(zip(hard["slide_id"], hard["idx"])) == above
    _enrichment(results, sets, negatives["slide_id"], "hardneg", "Mimic")
