"""Where a synthetic slide's tissue, tumor and mimic regions lie: level-0 polygons.

Why its own step: the layout is decided once, at low resolution, before any pixel is rendered; the
renderer then only asks which polygons reach into a window, and the same polygons are the slide's
ground truth (annotations). Tissue is a few irregular blobs; regions are placed inside tissue on a
coarse free-space mask, apart from each other, with fewer placed (and a warning) when room runs out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from hnm.core.errors import ConfigError

log = logging.getLogger(__name__)


def _star_polygon(
    rng: np.random.Generator,
    centre: tuple[float, float],
    radius: float,
    vertices: int,
    harmonics: int,
    amplitude: float,
    roughness: float,
) -> np.ndarray:
    """An irregular, simple (star-shaped) outline: a circle bent by a few random low harmonics."""
    theta = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    r = np.ones(vertices)
    for k in range(2, harmonics + 2):
        r += (
            amplitude
            * rng.uniform(0.3, 1.0)
            / k**0.7
            * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    # outline roughness at no more than 256 control points, so more vertices only smooth it
    knots = min(vertices, 256)
    rough = rng.standard_normal(knots)
    rough = (np.roll(rough, 1) + 2 * rough + np.roll(rough, -1)) / 4
    rough = np.interp(
        theta, np.linspace(0, 2 * np.pi, knots, endpoint=False), rough, period=2 * np.pi
    )
    r = radius * np.clip(r + roughness * rough, 0.35, None)
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)


def _raster(polygons: list[np.ndarray], shape: tuple[int, int], scale: float) -> np.ndarray:
    """The polygons filled on a mask `scale` times coarser than level 0."""
    image = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(image)
    for polygon in polygons:
        draw.polygon((polygon / scale).ravel().tolist(), fill=1)
    return np.asarray(image, dtype=bool)


@dataclass(frozen=True)
class Layout:
    """A slide's polygons, (K, 2) level-0 x, y, unclosed, by kind."""

    tissue: list[np.ndarray]
    tumor: list[np.ndarray]
    mimic: list[np.ndarray]


def make_layout(
    rng: np.random.Generator,
    width: int,
    height: int,
    mpp: float,
    label: int,
    tumor_regions: int,
    mimic_regions: int,
    region_size_um: float,
) -> Layout:
    """Tissue blobs covering 35-50% of the slide, then tumor (if `label` is 1) and mimic regions
    of about `region_size_um` across, in random order, each clear of the others and of the edge."""
    n_blobs = int(rng.integers(2, 4))
    coverage = rng.uniform(0.35, 0.5)
    radius = math.sqrt(coverage * width * height / (n_blobs * math.pi))
    centres: list[tuple[float, float]] = []
    for _ in range(n_blobs):  # best of 20 candidates: blobs spread out but may touch
        candidates = rng.uniform(0.3, 0.7, size=(20, 2)) * [width, height] + rng.uniform(
            -0.3, 0.3, size=(20, 2)
        ) * [width, height]
        if centres:
            gaps = np.min(
                np.linalg.norm(candidates[:, None] - np.array(centres)[None], axis=2), axis=1
            )
            best = int(np.argmax(gaps))
        else:
            best = 0
        centres.append((float(candidates[best, 0]), float(candidates[best, 1])))
    tissue = []
    for centre in centres:
        size = radius * rng.uniform(0.8, 1.15)
        vertices = int(np.clip(2 * np.pi * size / 48, 256, 4096))  # edges of about 48 px or less
        blob = _star_polygon(rng, centre, size, vertices, 6, 0.35, 0.03)
        blob[:, 0] = np.clip(blob[:, 0], 1.0, width - 1.0)
        blob[:, 1] = np.clip(blob[:, 1], 1.0, height - 1.0)
        tissue.append(blob)

    scale = max(8.0, max(width, height) / 1024.0)  # level-0 px per layout-mask px
    shape = (math.ceil(height / scale), math.ceil(width / scale))
    free = _raster(tissue, shape, scale)
    free[[0, -1], :] = free[:, [0, -1]] = False  # regions stay inside the image too
    kinds = ["tumor"] * (tumor_regions if label == 1 else 0) + ["mimic"] * mimic_regions
    order = rng.permutation(len(kinds))
    placed: dict[str, list[np.ndarray]] = {"tumor": [], "mimic": []}
    base = region_size_um / 2.0 / mpp
    for index in order:
        kind = kinds[index]
        polygon = _star_polygon(rng, (0.0, 0.0), base * rng.uniform(0.75, 1.25), 96, 4, 0.22, 0.02)
        for _attempt in range(5):
            reach = float(np.max(np.hypot(polygon[:, 0], polygon[:, 1])))
            margin = max(2.5 * scale, 0.08 * reach)
            distance = ndimage.distance_transform_edt(free) * scale
            rows, cols = np.nonzero(distance >= reach + margin)
            if rows.size:
                pick = int(rng.integers(rows.size))
                centre = ((cols[pick] + 0.5) * scale, (rows[pick] + 0.5) * scale)
                region = polygon + np.array(centre)
                placed[kind].append(region)
                grown = (region - centre) * (1 + margin / reach) + centre
                free &= ~_raster([grown], shape, scale)
                break
            polygon = polygon * 0.8
        else:
            log.warning(
                "no room for a %s region of %.0f um in the tissue; placed fewer",
                kind,
                region_size_um,
            )
    if label == 1 and not placed["tumor"]:
        raise ConfigError(
            f"could not place any tumor region of {region_size_um} um in a {width}x{height} px slide "
            f"at {mpp} um/px; use a smaller --tumor-size-um or a larger slide"
        )
    return Layout(tissue=tissue, tumor=placed["tumor"], mimic=placed["mimic"])
