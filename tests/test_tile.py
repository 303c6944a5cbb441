"""The patch grid and the `tile` / `failures` commands, on hand-computed cases and real slides."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from hnm.cli import main
from hnm.core.errors import SlideError
from hnm.io.h5io import read_tiles
from hnm.tile.grid import GridParams, grid_coords, plan_reads, tissue_fractions
from hnm.tile.settings import TileSettings

APERIO_DOWNSAMPLES = (1.0, 4.0016, 16.0064)
BOXES_DOWNSAMPLES = (1.0, 2.0, 4.016129032258064, 8.086312118570184)  # boxes.tiff, from openslide


def paper_grid(**changes: float) -> GridParams:
    """The paper's 224 px patches at 1.0 um/px (10x) with `changes`, checked as config values are."""
    return TileSettings(**{"patch_size": 224, "target_mpp": 1.0, **changes}).grid()


# ---------------------------------------------------------------------------- arithmetic


def test_plan_reads_hand_computed() -> None:
    # 0.25 um/px scan, 224 px at 1.0 um/px: 224 * 1.0 / 0.25 = 896 level-0 px; wanted downsample 4
    # -> level 1 (4.0016 is within 1%); read round(896 / 4.0016) = round(223.91) = 224 px
    plan = plan_reads(APERIO_DOWNSAMPLES, 0.25, paper_grid())
    assert (plan.step_level0, plan.stride_level0, plan.level, plan.read_size) == (896, 896, 1, 224)
    assert plan.level_downsample == 4.0016
    # 0.5 um/px target: 448 level-0 px, downsample 2 -> no level near: level 0, read 448
    plan = plan_reads(APERIO_DOWNSAMPLES, 0.25, paper_grid(target_mpp=0.5))
    assert (plan.step_level0, plan.level, plan.read_size) == (448, 0, 448)
    # 0.499 um/px, 112 px at 1.0: round(224.449) = 224, single level
    plan = plan_reads((1.0,), 0.499, paper_grid(patch_size=112))
    assert (plan.step_level0, plan.level, plan.read_size) == (224, 0, 224)
    # overlap 0.5 halves the stride: round(896 * 0.5) = 448
    assert plan_reads(APERIO_DOWNSAMPLES, 0.25, paper_grid(overlap=0.5)).stride_level0 == 448


def test_plan_reads_on_uneven_pyramid() -> None:
    # boxes.tiff with mpp 0.5; 32 px at 2.0 um/px = 128 level-0 px, downsample 4 -> level 2
    # (4.0161 <= 4 * 1.01), read round(128 / 4.016129) = round(31.87) = 32
    plan = plan_reads(BOXES_DOWNSAMPLES, 0.5, paper_grid(patch_size=32, target_mpp=2.0))
    assert (plan.step_level0, plan.level, plan.read_size) == (128, 2, 32)
    # 32 px at 8.0 um/px = 512 level-0 px, downsample 16 -> level 3, read round(63.32) = 63
    plan = plan_reads(BOXES_DOWNSAMPLES, 0.5, paper_grid(patch_size=32, target_mpp=8.0))
    assert (plan.step_level0, plan.level, plan.read_size) == (512, 3, 63)


def test_upsampling_is_refused_naming_the_slide() -> None:
    with pytest.raises(SlideError) as caught:
        plan_reads((1.0,), 0.5, paper_grid(target_mpp=0.25), "s42", "/data/s42.svs")
    message = str(caught.value)
    assert "s42" in message and "/data/s42.svs" in message and "upsampled" in message
    # within 10% finer is tolerated (a 0.5 um/px target on a 0.499 um/px... or 0.46 on 0.5)
    plan = plan_reads((1.0,), 0.5, paper_grid(target_mpp=0.46))
    assert (plan.step_level0, plan.level, plan.read_size) == (206, 0, 206)  # round(206.08)


def test_grid_coords_stay_inside_the_slide() -> None:
    coords = grid_coords((1000, 700), 300, 300)
    # x: 0, 300, 600 (900 + 300 > 1000); y: 0, 300 (600 + 300 > 700); row by row
    assert coords.tolist() == [[0, 0], [300, 0], [600, 0], [0, 300], [300, 300], [600, 300]]
    assert grid_coords((299, 1000), 300, 300).shape == (0, 2)
    assert len(grid_coords((1000, 700), 300, 150)) == 5 * 3  # x 0..600 by 150, y 0..300


def test_tissue_fractions_exact_for_unaligned_patches() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True  # left half is tissue; 10 level-0 px per mask px
    coords = np.array([[0, 0], [10, 0], [15, 0], [25, 5], [30, 0]])
    fractions = tissue_fractions(mask, 10.0, coords, 20)
    # [0,20) all tissue; [10,30) half; [15,35): x 15..20 tissue = 5/20; [25,45): none;
    # [30,50) runs past the mask (40 px wide): background
    assert fractions == pytest.approx([1.0, 0.5, 0.25, 0.0, 0.0])
    assert tissue_fractions(mask, 10.0, np.array([[0, 0]]), 5) == pytest.approx([1.0])


# ---------------------------------------------------------------------------- CLI on real slides


def _tile(slide: Path, slide_id: str, out: Path, *extra: str) -> int:
    return main(
        [
            "tile",
            "--slide",
            str(slide),
            "--slide-id",
            slide_id,
            "--out",
            str(out / f"{slide_id}.h5"),
            "--qc",
            str(out / f"{slide_id}.png"),
            *extra,
        ]
    )


def _glass_fraction_free(osr: openslide.OpenSlide, x: int, y: int, side: int) -> float:
    """Fraction of non-glass pixels, by a rule unrelated to the tiler's (no saturation, no Otsu):
    glass is bright (all channels >= 200) and grey (channel spread <= 25)."""
    rgb = np.asarray(osr.read_region((int(x), int(y)), 0, (side, side)))[..., :3].astype(int)
    glass = (rgb.min(axis=-1) >= 200) & (np.ptp(rgb, axis=-1) <= 25)
    return float(1.0 - glass.mean())


def test_cmu1_patches_lie_on_tissue(test_slides, tmp_path) -> None:
    slide = test_slides / "cmu-1-small-region.svs"
    assert _tile(slide, "cmu1", tmp_path, "--patch-size", "112", "--target-mpp", "1.0") == 0
    coords, attrs = read_tiles(tmp_path / "cmu1.h5")
    assert attrs["failed"] is False and attrs["error"] == ""
    assert attrs["slide_id"] == "cmu1" and attrs["slide_path"] == str(slide)
    assert (attrs["mpp"], attrs["mpp_source"], attrs["patch_size"]) == (0.499, "metadata", 112)
    assert (attrs["step_level0"], attrs["level"], attrs["read_size"]) == (224, 0, 224)
    assert attrs["n_grid"] == (2220 // 224) * (2967 // 224) == 117
    assert 20 <= len(coords) == attrs["n_patches"] <= 80
    assert (coords % 224 == 0).all()
    assert (coords[:, 0] + 224 <= 2220).all() and (coords[:, 1] + 224 <= 2967).all()
    with h5py.File(tmp_path / "cmu1.h5") as handle:
        fractions = handle["tissue_fraction"][:]
    assert fractions.shape == (len(coords),) and (fractions >= 0.5).all()

    osr = openslide.OpenSlide(str(slide))
    kept = {tuple(c) for c in coords.tolist()}
    kept_tissue = [_glass_fraction_free(osr, x, y, 224) for x, y in coords]
    rejected_tissue = [
        _glass_fraction_free(osr, x, y, 224)
        for x, y in grid_coords(osr.dimensions, 224, 224).tolist()
        if (x, y) not in kept
    ]
    # kept patches are mostly tissue, every one of them substantially
    assert min(kept_tissue) > 0.45 and np.mean(kept_tissue) > 0.75
    # rejected cells are mostly glass; none is a clearly tissue-filled patch that was missed
    assert np.median(rejected_tissue) < 0.1 and np.mean(rejected_tissue) < 0.2
    assert max(rejected_tissue) < 0.7

    with Image.open(tmp_path / "cmu1.png") as qc:
        assert qc.mode == "RGB" and 600 <= max(qc.size) <= 1024 + 200


def test_blank_slide_is_a_named_failure_or_skipped_on_request(tmp_path, capsys) -> None:
    slide = tmp_path / "blank.tiff"
    rng = np.random.default_rng(3)
    glass = np.clip(rng.normal(241, 3, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    tifffile.imwrite(
        slide,
        glass,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    assert _tile(slide, "blank", out, "--patch-size", "64", "--target-mpp", "1.0") == 2
    err = capsys.readouterr().err
    assert "slide 'blank'" in err and str(slide) in err and "no patch has 50% tissue" in err
    assert "64 grid cells" in err and "on_slide_error: skip" in err
    assert not out.exists() or not list(out.iterdir())
    assert (
        _tile(
            slide,
            "blank",
            out,
            "--patch-size",
            "64",
            "--target-mpp",
            "1.0",
            "--on-slide-error",
            "skip",
        )
        == 0
    )
    coords, attrs = read_tiles(out / "blank.h5")
    assert coords.shape == (0, 2) and attrs["failed"] is True
    assert "no patch has 50% tissue" in attrs["error"] and "on_slide_error" not in attrs["error"]
    assert (out / "blank.png").exists()


def test_boxes_refused_without_mpp(test_slides, tmp_path, capsys) -> None:
    slide = test_slides / "boxes.tiff"
    assert _tile(slide, "boxes", tmp_path) == 2
    err = capsys.readouterr().err
    assert "boxes" in err and str(slide) in err and "352.8 um/px" in err and "mpp" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_boxes_tiled_with_mpp_override(test_slides, tmp_path) -> None:
    slide = test_slides / "boxes.tiff"
    # at 0.5 um/px the 300 x 250 px image is 150 x 125 um: small tissue settings to match
    rc = _tile(
        slide,
        "boxes",
        tmp_path,
        "--mpp",
        "0.5",
        "--patch-size",
        "16",
        "--target-mpp",
        "2.0",
        "--tissue-mpp",
        "2",
        "--min-tissue-area-um2",
        "500",
        "--closing-um",
        "0",
        "--median-um",
        "0",
    )
    assert rc == 0
    coords, attrs = read_tiles(tmp_path / "boxes.h5")
    assert (attrs["mpp"], attrs["mpp_source"], attrs["failed"]) == (0.5, "sheet", False)
    # 16 px at 2.0 um/px = 64 level-0 px; downsample 4 -> level 2 (4.016), read round(15.94) = 16
    assert (attrs["step_level0"], attrs["level"], attrs["read_size"]) == (64, 2, 16)
    assert attrs["tissue_mask_level"] == 2  # 2 / 0.5 = 4 -> level 2, as the pyramid has it
    assert attrs["n_grid"] == 4 * 3 and 1 <= len(coords) < 12
    osr = openslide.OpenSlide(str(slide))
    for x, y in coords:
        assert _glass_fraction_free(osr, x, y, 64) >= 0.5  # coloured boxes, not white


BAD_SLIDES = [
    ("unreadable.svs", "Bogus marker length"),
    ("unopenable.tiff", "Unsupported TIFF compression: 52479"),
    ("broken.svs", "Unsupported or missing image file"),
]


@pytest.mark.parametrize(("name", "reader_message"), BAD_SLIDES)
def test_bad_slide_fails_clearly(test_slides, tmp_path, capsys, name, reader_message) -> None:
    slide = test_slides / name
    assert _tile(slide, "bad_one", tmp_path) == 2
    err = capsys.readouterr().err
    assert "slide 'bad_one'" in err and str(slide) in err and reader_message in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("name", "reader_message"), BAD_SLIDES)
def test_bad_slide_skipped_on_request(test_slides, tmp_path, caplog, name, reader_message):
    slide = test_slides / name
    assert _tile(slide, "bad_one", tmp_path, "--on-slide-error", "skip") == 0
    coords, attrs = read_tiles(tmp_path / "bad_one.h5")
    assert coords.shape == (0, 2) and attrs["failed"] is True and attrs["n_patches"] == 0
    assert reader_message in attrs["error"] and attrs["slide_id"] == "bad_one"
    assert "on_slide_error" not in attrs["error"]  # the slide is skipped already
    assert attrs["slide_path"] == str(slide)
    with Image.open(tmp_path / "bad_one.png") as qc:
        assert qc.size[0] >= 600
    assert "skipping slide" in caplog.text and reader_message in caplog.text


def test_bad_settings_fail_even_when_skipping(test_slides, tmp_path, capsys) -> None:
    slide = test_slides / "cmu-1-small-region.svs"
    assert _tile(slide, "cmu1", tmp_path, "--overlap", "1.0", "--on-slide-error", "skip") == 2
    assert "overlap" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_failures_lists_every_skipped_slide(test_slides, tmp_path) -> None:
    tiles = []
    for name, _ in BAD_SLIDES:
        slide_id = name.replace(".", "_")
        assert _tile(test_slides / name, slide_id, tmp_path, "--on-slide-error", "skip") == 0
        tiles.append(tmp_path / f"{slide_id}.h5")
    assert _tile(test_slides / "cmu-1-small-region.svs", "good", tmp_path) == 0
    tiles.append(tmp_path / "good.h5")

    report = tmp_path / "failed_slides.tsv"
    assert main(["failures", "--tiles", *map(str, tiles), "--out", str(report)]) == 0
    lines = report.read_text().splitlines()
    assert lines[0] == "slide_id\tpath\terror\tstage" and len(lines) == 4
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == ["unreadable_svs", "unopenable_tiff", "broken_svs"]
    for row, (name, message) in zip(rows, BAD_SLIDES):
        assert row[1] == str(test_slides / name) and message in row[2] and row[3] == "tiling"

    assert main(["failures", "--tiles", str(tmp_path / "good.h5"), "--out", str(report)]) == 0
    assert report.read_text() == "slide_id\tpath\terror\tstage\n"


def test_failures_names_an_unreadable_tiles_file(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.h5"
    assert main(["failures", "--tiles", str(missing), "--out", str(tmp_path / "f.tsv")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_one_call_tiles_several_slides_as_separate_calls_do(test_slides, tmp_path) -> None:
    """tile.slides_per_job: one process for a batch writes each slide's files exactly as one
    process per slide does, each slide with its own --mpp (or its metadata)."""
    cmu1, boxes = test_slides / "cmu-1-small-region.svs", test_slides / "boxes.tiff"
    small = ["--patch-size", "16", "--target-mpp", "2.0", "--tissue-mpp", "2"]
    small += ["--min-tissue-area-um2", "500", "--closing-um", "0", "--median-um", "0"]
    assert _tile(cmu1, "cmu1", tmp_path / "one", *small) == 0
    assert _tile(boxes, "boxes", tmp_path / "one", "--mpp", "0.5", *small) == 0
    batch = tmp_path / "batch"
    args = ["tile", "--slide", str(cmu1), str(boxes), "--slide-id", "cmu1", "boxes"]
    args += ["--out", str(batch / "cmu1.h5"), str(batch / "boxes.h5")]
    args += ["--qc", str(batch / "cmu1.png"), str(batch / "boxes.png"), *small]
    assert main([*args, "--mpp", "metadata", "0.5"]) == 0
    for slide_id in ("cmu1", "boxes"):
        (alone, alone_attrs), (batched, batched_attrs) = (
            read_tiles(folder / f"{slide_id}.h5") for folder in (tmp_path / "one", batch)
        )
        assert np.array_equal(alone, batched) and len(alone)
        assert {k: v for k, v in alone_attrs.items() if k != "timings"} == {
            k: v for k, v in batched_attrs.items() if k != "timings"
        }
    assert read_tiles(batch / "boxes.h5")[1]["mpp_source"] == "sheet"
    assert read_tiles(batch / "cmu1.h5")[1]["mpp_source"] == "metadata"


def test_a_batch_with_uneven_lists_is_refused(test_slides, tmp_path, capsys) -> None:
    slide = str(test_slides / "cmu-1-small-region.svs")
    args = ["tile", "--slide", slide, slide, "--slide-id", "a", "b", "--out", "a.h5", "b.h5"]
    assert main([*args, "--qc", str(tmp_path / "a.png")]) == 2
    assert "give one of each per slide" in capsys.readouterr().err
    assert main([*args, "--qc", "a.png", "b.png", "--mpp", "0.5"]) == 2
    assert "1 value(s) for 2 slide(s)" in capsys.readouterr().err
    assert main([*args, "--qc", "a.png", "b.png", "--mpp", "0.5", "fast"]) == 2
    assert "neither a number nor 'metadata'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
