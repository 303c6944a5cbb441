"""Tissue detection: Otsu, saturation, morphology in physical units, and reading real slides."""

from __future__ import annotations

import math

import numpy as np
import openslide
import pytest
from scipy import ndimage

import hnm.tile.tissue
from hnm.core.errors import SlideError
from hnm.tile.settings import TileSettings
from hnm.tile.tissue import (
    block_mean,
    close_mask,
    detect_tissue,
    fill_small_holes,
    median_above,
    otsu_threshold,
    read_downsampled,
    remove_small_components,
    sampled_median,
    saturation,
    segment_tissue,
)

DEFAULTS = TileSettings().tissue()
PINK = (220, 140, 190)  # eosin-like: saturation (220-140)/220*255 = 92.7 -> 93
GLASS = (242, 240, 241)


def test_otsu_hand_computed() -> None:
    # values 0, 2, 10, 10: t=0 -> 0.25*0.75*(22/3)^2 = 10.08; t in 2..9 -> 0.5*0.5*(10-1)^2 = 20.25
    # (the maximum; the lowest such t wins); t >= 10 leaves one class empty.
    assert otsu_threshold(np.array([0, 2, 10, 10], dtype=np.uint8)) == 2.0


def test_otsu_separates_two_hand_made_modes() -> None:
    low = np.repeat(np.array([20, 25, 30], dtype=np.uint8), 50)
    high = np.repeat(np.array([200, 210], dtype=np.uint8), 30)
    # every t in 30..199 gives the same split and variance; ties resolve to the lowest
    assert otsu_threshold(np.concatenate([high, low])) == 30.0


def test_otsu_on_overlapping_modes_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    low = rng.normal(50, 14, 3000)
    high = rng.normal(130, 18, 1000)
    values = np.clip(np.concatenate([low, high]), 0, 255).astype(np.uint8)
    # the definition, evaluated directly for every cut t (class 'above' = values > t)
    variances = [
        (values <= t).sum()
        * (values > t).sum()
        * (values[values <= t].mean() - values[values > t].mean()) ** 2
        for t in range(int(values.min()), int(values.max()))
    ]
    expected = int(values.min()) + int(np.argmax(variances))
    threshold = otsu_threshold(values)
    assert threshold == expected
    assert 70 < threshold < 110  # between the modes
    assert (values[:3000] > threshold).mean() < 0.1 and (values[3000:] > threshold).mean() > 0.9


def test_otsu_has_nothing_to_split() -> None:
    assert math.isnan(otsu_threshold(np.array([], dtype=np.uint8)))
    assert math.isnan(otsu_threshold(np.full(100, 7, dtype=np.uint8)))


def test_saturation_hand_values() -> None:
    rgb = np.array([[[255, 0, 0], [200, 100, 100], [0, 0, 0], [128, 128, 128]]], dtype=np.uint8)
    # (200-100)/200*255 = 127.5, rounded half up -> 128
    assert saturation(rgb).tolist() == [[255, 128, 0, 0]]


def test_block_mean_averages_ragged_edges() -> None:
    image = np.arange(25, dtype=np.uint8).reshape(5, 5, 1)
    out = block_mean(image, 2)[..., 0]
    # top-left block 0,1,5,6 -> 3; last column block (4, 9) -> 6.5 -> 7 (round half up);
    # bottom row block (20, 21) -> 20.5 -> 21; corner (24) -> 24
    assert out.shape == (3, 3)
    assert out[0, 0] == 3 and out[0, 2] == 7 and out[2, 0] == 21 and out[2, 2] == 24


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_fast_median_threshold_equals_median_filter(kernel: int) -> None:
    values = np.random.default_rng(kernel).integers(0, 256, (41, 57)).astype(np.uint8)
    reference = ndimage.median_filter(values, size=kernel, mode="nearest")
    for threshold in (40.0, 127.5, 200.0):
        assert np.array_equal(median_above(values, kernel, threshold), reference > threshold)
    assert np.array_equal(sampled_median(values, kernel, 1), reference)
    assert np.array_equal(sampled_median(values, kernel, 4), reference[::4, ::4])


def _noisy_glass(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(GLASS, 3, shape + (3,)), 0, 255).astype(np.uint8)


def test_blank_white_slide_gives_no_tissue() -> None:
    rgb = _noisy_glass((300, 400), seed=1)
    mask, threshold, otsu = segment_tissue(rgb, 8.0, DEFAULTS)
    assert not mask.any()
    # Otsu alone would split the noise; the saturation floor is what keeps the slide blank
    assert otsu < DEFAULTS.min_saturation and threshold == DEFAULTS.min_saturation
    pure_white = np.full((50, 50, 3), 255, dtype=np.uint8)
    mask, threshold, otsu = segment_tissue(pure_white, 8.0, DEFAULTS)
    assert not mask.any() and math.isnan(otsu)


def test_pink_blob_on_glass_is_found() -> None:
    rgb = _noisy_glass((200, 200), seed=2)
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 90) ** 2 <= 50**2  # radius 400 um at 8 um/px
    rgb[disc] = PINK
    mask, threshold, _ = segment_tissue(rgb, 8.0, DEFAULTS)
    intersection = (mask & disc).sum()
    union = (mask | disc).sum()
    assert intersection / union > 0.97
    assert 15 <= threshold < 93


def _squares_image(scale: int) -> np.ndarray:
    """Glass with pink squares, drawn at 4 / scale um per pixel (same physical layout)."""
    rgb = np.zeros((200 * scale, 200 * scale, 3), dtype=np.uint8)
    rgb[:] = GLASS

    def put(y: int, x: int, side: int, color: tuple[int, int, int]) -> None:
        rgb[y * scale : (y + side) * scale, x * scale : (x + side) * scale] = color

    put(10, 10, 30, PINK)  # 120 x 120 um = 14,400 um^2 < 20,000: debris, removed
    put(10, 60, 60, PINK)  # 240 um square with a 40 um (1,600 um^2) hole: hole filled
    put(35, 85, 10, GLASS)
    put(100, 60, 90, PINK)  # 360 um square with a 280 um (78,400 um^2) hole: hole stays
    put(110, 70, 70, GLASS)
    return rgb


@pytest.mark.parametrize("scale", [1, 2])
def test_min_area_and_hole_filling_are_physical(scale: int) -> None:
    params = TileSettings(
        median_um=0, closing_um=0, min_tissue_area_um2=20_000, max_hole_area_um2=50_000
    ).tissue()
    mpp = 4.0 / scale
    mask, _, _ = segment_tissue(_squares_image(scale), mpp, params)
    at = lambda y, x: bool(mask[int(y * scale), int(x * scale)])  # noqa: E731 (4 um/px coords)
    assert not at(20, 20)  # small square dropped
    assert at(20, 70) and at(40, 90)  # medium square kept, its small hole filled
    assert at(105, 65) and not at(140, 100)  # big square kept, its big hole not filled
    expected_pixels = (60 * 60 + 90 * 90 - 70 * 70) * scale * scale
    assert mask.sum() == expected_pixels


def test_remove_and_fill_by_pixel_counts() -> None:
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True  # 9 px
    mask[10:15, 10:15] = True  # 25 px
    assert remove_small_components(mask, 10).sum() == 25
    assert remove_small_components(mask, 9).sum() == 34
    ring = np.zeros((10, 10), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a 1-px hole
    assert fill_small_holes(ring, 1)[4, 4] and not fill_small_holes(ring, 0)[4, 4]
    notch = np.zeros((10, 10), bool)
    notch[2:8, :] = True
    notch[4, :3] = False  # background open to the border is never a hole
    assert not fill_small_holes(notch, 100)[4, 0]


def test_closing_bridges_gaps_and_does_not_eat_borders() -> None:
    mask = np.zeros((30, 30), bool)
    mask[:, :12] = True
    mask[:, 14:20] = True  # a 2-px gap
    closed = close_mask(mask, 2)
    assert closed[:, :20].all()  # gap bridged, and border rows / column 0 kept
    assert not closed[:, 21:].any()


# ---------------------------------------------------------------------------- real slides


def test_pyvips_and_openslide_reads_agree(test_slides) -> None:
    path = str(test_slides / "cmu-1-small-region.svs")
    osr = openslide.OpenSlide(path)
    fast = read_downsampled(osr, path, "cmu1", 16.0)
    assert fast.reader == "pyvips" and fast.rgb.shape == (
        186,
        139,
        3,
    )  # ceil(2967/16), ceil(2220/16)
    level0 = np.asarray(osr.read_region((0, 0), 0, osr.dimensions))[..., :3]
    reference = block_mean(level0, 16)
    # both box-average the same decoded pixels; only the rounding and the ragged edge differ
    assert np.abs(fast.rgb[:-1, :-1].astype(int) - reference[:-1, :-1]).max() <= 1
    assert np.abs(fast.rgb.astype(int) - reference).mean() < 0.5


def test_openslide_strips_match_one_whole_read(test_slides, monkeypatch) -> None:
    """The fall-back reader for slides without a coarse level: strip by strip, bounded memory."""
    path = str(test_slides / "cmu-1-small-region.svs")
    osr = openslide.OpenSlide(path)
    monkeypatch.setattr(
        hnm.tile.tissue, "STRIP_PIXELS", 2220 * 100
    )  # 96-row strips (multiple of 16)
    monkeypatch.setattr(hnm.tile.tissue, "PYVIPS_VENDORS", frozenset())
    lowres = read_downsampled(osr, path, "cmu1", 16.0)
    assert lowres.reader == "openslide" and lowres.downsample == 16.0
    level0 = np.asarray(osr.read_region((0, 0), 0, osr.dimensions))[..., :3]
    assert np.array_equal(lowres.rgb, block_mean(level0, 16))


def test_detect_tissue_on_real_slide(test_slides) -> None:
    path = str(test_slides / "cmu-1-small-region.svs")
    tissue = detect_tissue(openslide.OpenSlide(path), path, "cmu1", 0.499, DEFAULTS)
    assert tissue.downsample == 16 and tissue.mask_mpp == pytest.approx(7.984)
    assert tissue.mask.shape == (186, 139)
    # the section fills roughly the central third of this crop (see the QC image)
    assert 0.2 < tissue.mask.mean() < 0.5
    assert tissue.mask[150, 70] and not tissue.mask[20, 10]


def test_corrupt_tiles_become_a_slide_error(test_slides) -> None:
    path = str(test_slides / "unreadable.svs")
    with pytest.raises(SlideError) as caught:
        detect_tissue(openslide.OpenSlide(path), path, "bad1", 0.499, DEFAULTS)
    assert "bad1" in str(caught.value) and "Bogus marker length" in str(caught.value)
