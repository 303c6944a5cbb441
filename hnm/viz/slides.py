"""What every per-slide picture needs: a bounded thumbnail from the pyramid, the patches' scores as
an image at thumbnail scale, and patch truth from the sheet's annotation file."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from hnm.io.annotations import load_polygons_by_class, patch_labels
from hnm.io.slide import open_slide
from hnm.tile.tissue import read_downsampled


@dataclass
class Thumbnail:
    """A whole-slide RGB image; `downsample` is level-0 px per thumbnail px."""

    rgb: np.ndarray
    downsample: float
    dimensions: tuple[int, int]  # level-0 width, height

    def to_thumb(self, level0: np.ndarray) -> np.ndarray:
        return np.asarray(level0, dtype=np.float64) / self.downsample


def thumbnail(path: str | os.PathLike[str], slide_id: str, max_px: int) -> Thumbnail:
    """The slide at most `max_px` on its longest side, read from the coarsest suitable pyramid
    level (hnm.tile.tissue.read_downsampled), so memory and time do not grow with level 0."""
    osr = open_slide(path, slide_id)
    try:
        width, height = (int(v) for v in osr.dimensions)
        wanted = max(width, height) / max_px
        low = read_downsampled(osr, os.fspath(path), slide_id, max(wanted, 1.0))
    finally:
        osr.close()
    rgb = low.rgb
    scale = max_px / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    downsample = width / rgb.shape[1]
    return Thumbnail(rgb, downsample, (width, height))


def score_image(
    thumb: Thumbnail, coords: np.ndarray, side_level0: float, scores: np.ndarray
) -> np.ndarray:
    """Float image of the thumbnail's shape: each patch's score over its area (the highest where
    patches overlap), NaN where no patch lies, so the colour map leaves the tissue visible."""
    height, width = thumb.rgb.shape[:2]
    grid = np.full((height, width), np.nan, dtype=np.float32)
    if len(coords) == 0:
        return grid
    corners = thumb.to_thumb(coords)
    side = max(side_level0 / thumb.downsample, 1.0)
    x0 = np.clip(np.floor(corners[:, 0]).astype(int), 0, width)
    y0 = np.clip(np.floor(corners[:, 1]).astype(int), 0, height)
    x1 = np.clip(np.ceil(corners[:, 0] + side).astype(int), 0, width)
    y1 = np.clip(np.ceil(corners[:, 1] + side).astype(int), 0, height)
    for a, b, c, d, value in zip(x0, y0, x1, y1, np.asarray(scores, dtype=np.float32)):
        block = grid[b:d, a:c]
        grid[b:d, a:c] = np.fmax(block, value)
    return grid


def patch_truth(
    annotation: str,
    classes: list[str],
    coords: np.ndarray,
    side_level0: float,
    min_fraction: float,
) -> dict[str, np.ndarray]:
    """Class name -> bool per patch (at least `min_fraction` inside that class's polygons); empty
    when the slide has no annotation file."""
    if not annotation:
        return {}
    polygons = load_polygons_by_class(annotation, classes)
    return {
        name: np.asarray(
            patch_labels(polygons[name], coords, int(round(side_level0)), min_fraction), bool
        )
        for name in classes
    }


def outlines(annotation: str, classes: list[str]) -> dict[str, list[np.ndarray]]:
    """Class name -> polygon outer rings (level-0 x, y); empty without an annotation file."""
    return load_polygons_by_class(annotation, classes) if annotation else {}


def nice_length(target: float) -> float:
    """1, 2 or 5 times a power of ten, the largest not above `target` (a scale bar's length)."""
    if target <= 0:
        return 1.0
    power = 10 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))
