"""Extraction batches depend on each slide's id, not on its row: adding slides moves few others."""

from __future__ import annotations

import random

import pytest

from hnm.extract.batches import batches_by_split, extraction_batches, hash_bits


def _slides(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"case_{rng.randrange(10**6):06d}" for _ in range(count)]


def test_every_slide_in_one_batch_of_at_most_the_limit() -> None:
    slides = _slides(300, 0)
    batches = extraction_batches(slides, 16)
    members = [slide for batch in batches.values() for slide in batch]
    assert sorted(members) == sorted(set(slides))
    assert max(len(batch) for batch in batches.values()) <= 16
    assert extraction_batches(list(reversed(slides)), 16) == batches  # row order is irrelevant


def test_one_slide_per_job_gives_single_batches() -> None:
    assert all(len(b) == 1 for b in extraction_batches(_slides(40, 1), 1).values())


@pytest.mark.parametrize("where", ["inserted", "appended"])
def test_new_slides_change_only_the_batches_they_fall_into(where: str) -> None:
    old = _slides(200, 2)
    new = [s for s in _slides(5, 3) if s not in old]
    grown = new + old if where == "inserted" else old + new
    before = extraction_batches(old, 16)
    after = extraction_batches(grown, 16)
    unchanged = {name for name, batch in after.items() if before.get(name) == batch}
    moved = {slide for name, batch in after.items() if name not in unchanged for slide in batch}
    # the old batches the new slides land in: every leaf whose prefix starts one of them
    touched = {name for name in before for slide in new if hash_bits(slide).startswith(name[1:])}
    may_move = {slide for name in touched for slide in before[name]} | set(new)
    assert moved <= may_move
    assert len(unchanged) >= len(before) - len(new)


def test_bad_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        extraction_batches(["a"], 0)


def test_batches_by_split_never_mix_splits_and_a_new_test_slide_leaves_train_alone() -> None:
    slides = _slides(120, 4)
    split_of = {slide: ("train", "val", "test")[i % 3] for i, slide in enumerate(slides)}
    before = batches_by_split(split_of, 8)
    assert sorted(s for members in before.values() for s in members) == sorted(slides)
    for name, members in before.items():
        split = name.split("_")[0]
        assert {split_of[s] for s in members} == {split}
        assert name[len(split) + 1 :] in extraction_batches(
            [s for s in slides if split_of[s] == split], 8
        )
    new = {s: "test" for s in _slides(5, 5) if s not in split_of}
    after = batches_by_split({**split_of, **new}, 8)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed and all(name.startswith("test_") for name in changed)
