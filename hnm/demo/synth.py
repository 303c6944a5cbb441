"""Synthetic pyramidal whole-slide images with known tumor, so the pipeline can be run and checked
without downloading a cohort: the public entry (`write_synthetic_slide`, `write_annotation`).

A slide holds a few irregular tissue blobs (eosin stroma with fibres and sparse spindle nuclei); a
positive slide adds tumor regions, and every slide adds "mimics": benign regions with the same mean
colour and nuclear area as tumor, so a mean-colour or coarse feature cannot tell them apart, but a
different fine texture (styles.py). Mimics are what make hard negatives hard; `difficulty` moves
their texture towards tumor's (1 = same distribution).

The work is split by job: layout.py places the regions (level-0 polygons, decided once at low
resolution), render.py draws any level-0 rectangle from them (textures.py makes that a function
of position alone, so tiles join seamlessly and the file is byte-identical for the same arguments),
and pyramid.py streams the rendered tiles into a JPEG-tiled pyramidal TIFF in bounded memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hnm.core.atomic import atomic_path, write_json
from hnm.core.errors import ConfigError
from hnm.demo.layout import make_layout
from hnm.demo.pyramid import write_pyramid
from hnm.demo.render import Scene
from hnm.demo.styles import GLASS_RGB
from hnm.demo.textures import BANK


@dataclass
class SynthResult:
    """The written slide and its ground truth; polygons are (K, 2) level-0 x, y, unclosed."""

    path: str
    width: int
    height: int
    mpp: float
    label: int
    tumor_polygons: list[np.ndarray]
    mimic_polygons: list[np.ndarray]
    tissue_polygons: list[np.ndarray]


def _check(
    width: int,
    height: int,
    mpp: float,
    label: int,
    tumor_regions: int,
    mimic_regions: int,
    tumor_size_um: float,
    difficulty: float,
    tile_size: int,
    jpeg_quality: int,
) -> None:
    problems = []
    if width < 64 or height < 64:
        problems.append(f"width and height must be at least 64 px (got {width}x{height})")
    if not 0.05 <= mpp <= 50:
        problems.append(f"mpp must be in [0.05, 50] um/px (got {mpp})")
    if label not in (0, 1):
        problems.append(f"label must be 0 or 1 (got {label})")
    if tumor_regions < 0 or mimic_regions < 0:
        problems.append("region counts must be >= 0")
    if label == 1 and tumor_regions < 1:
        problems.append("a positive slide (label 1) needs tumor_regions >= 1")
    if not tumor_size_um > 0:
        problems.append(f"tumor_size_um must be > 0 (got {tumor_size_um})")
    if not 0 <= difficulty <= 1:
        problems.append(f"difficulty must be in [0, 1] (got {difficulty})")
    if tile_size < 16 or tile_size % 16:
        problems.append(f"tile_size must be a positive multiple of 16 (got {tile_size})")
    if not 1 <= jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be in [1, 100] (got {jpeg_quality})")
    if problems:
        raise ConfigError("synthetic slide settings: " + "; ".join(problems))


def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    mpp: float = 0.5,
    label: int,
    seed: int,
    tumor_regions: int = 3,
    mimic_regions: int = 3,
    tumor_size_um: float = 300.0,
    difficulty: float = 0.5,
    tile_size: int = 256,
    jpeg_quality: int = 90,
    workers: int = 1,
) -> SynthResult:
    """Write one synthetic slide (atomically) and return its ground truth.

    `tumor_size_um` is the typical diameter of a tumor region, and of a mimic (they must match at a
    coarse look). `workers` threads render and encode tiles; the file does not depend on it.
    """
    _check(
        width,
        height,
        mpp,
        label,
        tumor_regions,
        mimic_regions,
        tumor_size_um,
        difficulty,
        tile_size,
        jpeg_quality,
    )
    rng = np.random.default_rng(seed)
    layout = make_layout(
        rng, width, height, mpp, label, tumor_regions, mimic_regions, tumor_size_um
    )
    scene = Scene(layout, rng, mpp, difficulty)
    with atomic_path(path) as temporary:
        write_pyramid(
            temporary,
            scene.render,
            width,
            height,
            mpp,
            tile_size,
            jpeg_quality,
            workers,
            fill=GLASS_RGB,
            background_period=BANK,  # background is glass plus the periodic noise bank
        )
    return SynthResult(
        path=os.fspath(path),
        width=width,
        height=height,
        mpp=mpp,
        label=label,
        tumor_polygons=[p.copy() for p in layout.tumor],
        mimic_polygons=[p.copy() for p in layout.mimic],
        tissue_polygons=[p.copy() for p in layout.tissue],
    )


_CLASS_COLOURS = {"Tumor": [200, 0, 0], "Mimic": [0, 120, 200], "Tissue": [20, 160, 20]}


def _feature(polygon: np.ndarray, name: str) -> dict:
    ring = np.round(np.asarray(polygon, dtype=np.float64), 2).tolist()
    ring.append(ring[0])  # GeoJSON rings are closed
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": _CLASS_COLOURS[name]},
        },
    }


def write_annotation(path: str | os.PathLike[str], result: SynthResult) -> None:
    """The ground truth as a QuPath-style GeoJSON FeatureCollection in level-0 pixel coordinates."""
    features = [_feature(p, "Tissue") for p in result.tissue_polygons]
    features += [_feature(p, "Tumor") for p in result.tumor_polygons]
    features += [_feature(p, "Mimic") for p in result.mimic_polygons]
    write_json(path, {"type": "FeatureCollection", "features": features})
