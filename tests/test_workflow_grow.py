"""A cohort that grows: five slides added to a finished 40-slide run re-tile and re-extract only
the batches they join, and batches hold close to `slides_per_job` slides."""

from __future__ import annotations

import random

import pytest

from hnm.extract.batches import batches_by_split, extraction_batches
from tests.workflow_runner import jobs_run, run, wildcards_run, write_config

pytestmark = pytest.mark.workflow

PER_JOB = 4
# 40 small demo slides; round 0 from random weights (no pretraining, which reads every train tile
# and so would re-extract everything when a slide joins).
BASE = {
    "rounds": 0,
    "demo": {
        "slides": {
            "train": {"tumor": 10, "normal": 10},
            "val": {"tumor": 5, "normal": 5},
            "test": {"tumor": 5, "normal": 5},
        },
        "width": 1024,
        "height": 1024,
        "tumor_regions": 1,
        "mimic_regions": 1,
    },
    "pretrain": {"epochs": 0},
    "tile": {"slides_per_job": PER_JOB},
    "extract": {"slides_per_job": PER_JOB},
}


def _slide_ids(train_tumor: int) -> list[str]:
    counts = {"train": (train_tumor, 10), "val": (5, 5), "test": (5, 5)}
    return [
        f"demo_{split}_{label}_{index:02d}"
        for split, (tumor, normal) in counts.items()
        for label, count in (("tumor", tumor), ("normal", normal))
        for index in range(count)
    ]


def test_added_slides_re_extract_only_the_batches_they_join(tmp_path) -> None:  # noqa: ANN001
    write_config(tmp_path, BASE)
    first = run(tmp_path, "features_round0", timeout=1200)
    # Batches never mix splits; tiling and extraction batch alike (the same slides_per_job).
    before = batches_by_split(_splits(_slide_ids(10)), PER_JOB)
    # one tiling rule and one extraction rule, one job per batch, one file per batch
    assert jobs_run(first)["extract"] == jobs_run(first)["tile"] == len(before)
    assert wildcards_run(first, "extract", "batch") == set(before)
    assert wildcards_run(first, "tile", "batch") == set(before)
    made = sorted(p.stem for p in (tmp_path / "results/tiles/batches").glob("*.h5"))
    assert made == sorted(before)

    grown = {**BASE, "demo": {**BASE["demo"], "slides": {**BASE["demo"]["slides"]}}}
    grown["demo"]["slides"]["train"] = {"tumor": 15, "normal": 10}
    write_config(tmp_path, grown)
    result = run(tmp_path, "features_round0", timeout=1200)
    second = jobs_run(result)
    after = batches_by_split(_splits(_slide_ids(15)), PER_JOB)
    new = set(_slide_ids(15)) - set(_slide_ids(10))
    # The batches whose members changed: those the new slides joined, and the halves of one that
    # grew past slides_per_job and split (its old members' features are made again by the half
    # they are now in). Every other batch keeps its name and members, and is not run.
    changed = {name for name, members in after.items() if before.get(name) != members}
    landed = {name for name in before for slide in new if slide in _members(after, name)}
    assert all(any(name.startswith(leaf) for leaf in landed) or new & set(after[name])
               for name in changed), (changed, landed)  # fmt: skip
    extracted = wildcards_run(result, "extract", "batch")
    assert extracted == changed, (extracted, changed)
    assert len(changed) <= 2 * len(new) < len(after)  # most batches untouched
    # Tiling is batched the same way (tile.slides_per_job): the same batches are tiled again,
    # all of them train batches (the new slides are train slides), and only the new slides are
    # drawn.
    tiled = wildcards_run(result, "tile", "batch")
    assert tiled == changed and all(name.startswith("train_") for name in tiled), tiled
    assert second.get("synth", 0) == len(new), second
    # Batches average within a factor 2 of slides_per_job.
    assert 45 / len(after) >= PER_JOB / 2


def _splits(slide_ids: list[str]) -> dict[str, str]:
    """{slide: split}, from the demo's ids (demo_{split}_{label}_{index})."""
    return {slide: slide.split("_")[1] for slide in slide_ids}


def _members(batches: dict[str, list[str]], prefix: str) -> set[str]:
    """The slides of every batch under the trie node `prefix` (a batch name)."""
    return {s for name, members in batches.items() if name.startswith(prefix) for s in members}


@pytest.mark.parametrize("per_job", [4, 16])
def test_batches_average_within_a_factor_2_of_slides_per_job(per_job: int) -> None:
    """The hash trie's leaves, at cohort sizes from 40 to 10,000 slides of random ids."""
    rng = random.Random(0)
    for slides in (40, 45, 100, 399, 1000, 3000, 10000):
        ids = {f"TCGA-{rng.randrange(16**8):08X}" for _ in range(slides)}
        batches = extraction_batches(ids, per_job)
        assert max(map(len, batches.values())) <= per_job
        assert len(ids) / len(batches) >= per_job / 2, (slides, per_job, len(batches))
