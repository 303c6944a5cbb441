"""Patch ground truth from polygon annotations (GeoJSON, as QuPath exports it).

Ground truth is optional in this pipeline: it is used only to score patch-level predictions. Files
may come from our synthetic generator or from a user's QuPath export, so the reader accepts what
QuPath writes (a FeatureCollection, a bare list of Features, a single Feature or geometry; Polygon,
MultiPolygon and GeometryCollection; holes) and matches class names case-insensitively.

Coverage is computed by point sampling: each patch is covered by an n x n grid of sample points
(n = patch side / mask resolution, 8 by default) and its fraction is the share of points inside the
annotation. The points are the pixel centres of one coarse mask over all patches, filled by an
even-odd scanline rule with half-open edges, so a polygon edge that falls exactly on a patch's
midline gives exactly 0.5 (no tie-breaking by a drawing library), and holes are exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from hnm.core.errors import HnmError

log = logging.getLogger("hnm.io.annotations")

DEFAULT_CLASS = "Tumor"
_MAX_MASK_PIXELS = 64_000_000  # a coarser mask is used past this, so memory stays bounded
_MAX_CROSSINGS = 4_000_000  # rows x edges (or columns) evaluated at once while filling
_GEOMETRIES = {
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
}


class Polygon(np.ndarray):
    """A (K, 2) array of an outer ring's level-0 x, y that also carries its holes.

    A plain (K, 2) array everywhere a caller expects one; `holes` is a list of (M, 2) arrays
    (empty for plain arrays made elsewhere, which `patch_tumor_fraction` also accepts)."""

    holes: list[np.ndarray]

    def __new__(cls, exterior: np.ndarray, holes: list[np.ndarray] | None = None) -> Polygon:
        array = np.asarray(exterior, dtype=np.float64).view(cls)
        array.holes = list(holes or [])
        return array

    def __array_finalize__(self, obj: Any) -> None:
        self.holes = getattr(obj, "holes", [])


def load_polygons(
    path: str | os.PathLike[str], class_name: str = DEFAULT_CLASS
) -> list[np.ndarray]:
    """Outer rings (with holes attached, see `Polygon`) of every feature of class `class_name`.

    A feature with no classification counts as the default class (Tumor): a file made only to mark
    tumor often leaves it out. Points and lines are ignored."""
    return load_polygons_by_class(path, [class_name])[class_name]


def load_polygons_by_class(
    path: str | os.PathLike[str], class_names: list[str]
) -> dict[str, list[np.ndarray]]:
    """`load_polygons` for several classes from one read of the file (QuPath exports can be large)."""
    path = os.fspath(path)
    document = _read_document(path)
    polygons: dict[str, list[np.ndarray]] = {name: [] for name in class_names}
    wanted: dict[str, list[str]] = {}  # case-folded name -> the names asked for with it
    for name in polygons:
        wanted.setdefault(name.strip().lower(), []).append(name)
    try:
        for number, feature in enumerate(_features(document)):
            name = _class_name(feature.get("properties")) or DEFAULT_CLASS
            if name.strip().lower() not in wanted:
                continue
            for rings in _polygon_rings(feature.get("geometry"), where=f"feature {number}"):
                exterior, *holes = rings
                for asked in wanted[name.strip().lower()]:
                    polygons[asked].append(Polygon(exterior, holes))
    except ValueError as error:
        raise HnmError(f"annotation file {path} is not valid GeoJSON: {error}") from error
    return polygons


def _read_document(path: str) -> Any:
    """The parsed JSON of an annotation file, or an HnmError naming the file and the fix."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise HnmError(
            f"annotation file {path} not found; check the sheet's annotation column"
        ) from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HnmError(
            f"annotation file {path} is not readable JSON ({error}); export it as GeoJSON"
        ) from error


def annotation_problems(
    path: str | os.PathLike[str],
    known_classes: list[str] | None = None,
    dimensions: tuple[int, int] | None = None,
) -> list[str]:
    """Everything wrong with one annotation file, found when the sheet is validated.

    The file is otherwise read only at evaluation, after all training, which is too late to learn
    that it is not GeoJSON, marks regions with points, names a class nobody scores (a typo such as
    'Tumour' leaves the slide without tumor ground truth) or is in another level's pixels.
    """
    path = os.fspath(path)
    try:
        document = _read_document(path)
    except HnmError as error:
        return [str(error)]
    known = {name.strip().lower(): name for name in (known_classes or [DEFAULT_CLASS])}
    problems: list[str] = []
    unknown: set[str] = set()
    rings: list[np.ndarray] = []
    try:
        for number, feature in enumerate(_features(document)):
            name = _class_name(feature.get("properties")) or DEFAULT_CLASS
            if name.strip().lower() not in known:
                unknown.add(name)
                continue
            problems.extend(_geometry_problems(path, number, name, feature.get("geometry")))
            for polygon in _polygon_rings(feature.get("geometry"), where=f"feature {number}"):
                rings.extend(polygon)
    except ValueError as error:
        return [f"annotation file {path} is not valid GeoJSON: {error}; export it again as GeoJSON"]
    if unknown:
        problems.append(
            f"annotation file {path} has class(es) {', '.join(sorted(unknown))}, which are not "
            f"scored (known: {', '.join(known.values())}); rename them in QuPath, or name them "
            "in evaluate.versus_classes to score them"
        )
    if dimensions is not None and rings:
        problems.extend(_extent_problems(path, np.concatenate(rings), dimensions))
    return problems


def _geometry_problems(path: str, number: int, name: str, geometry: Any) -> list[str]:
    """A feature of a scored class must mark a region: points and lines have no area."""
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind in {"Polygon", "MultiPolygon", "GeometryCollection"}:
        return []
    found = "no geometry" if geometry is None else f"a {kind or type(geometry).__name__} geometry"
    return [
        f"annotation file {path}: feature {number} (class {name}) has {found}; draw {name} "
        "regions as polygons (Polygon or MultiPolygon)"
    ]


def _extent_problems(path: str, points: np.ndarray, dimensions: tuple[int, int]) -> list[str]:
    """Polygons must lie on the slide (level-0 pixels); 1 % slack for regions drawn to the edge."""
    width, height = dimensions
    low = points.min(axis=0)
    high = points.max(axis=0)
    slack_x, slack_y = 1 + 0.01 * width, 1 + 0.01 * height
    if (
        low[0] >= -slack_x
        and low[1] >= -slack_y
        and high[0] <= width + slack_x
        and (high[1] <= height + slack_y)
    ):
        return []
    return [
        f"annotation file {path}: polygons span x {low[0]:.0f}..{high[0]:.0f}, y "
        f"{low[1]:.0f}..{high[1]:.0f}, beyond the slide's {width} x {height} level-0 pixels; "
        "export the annotations in level-0 (full resolution) pixel coordinates of this slide"
    ]


def _features(document: Any) -> Iterator[dict[str, Any]]:
    if isinstance(document, list):
        items: list[Any] = document
    elif isinstance(document, dict) and document.get("type") == "FeatureCollection":
        items = document.get("features")
        if not isinstance(items, list):
            raise ValueError("a FeatureCollection without a 'features' list")
    elif isinstance(document, dict) and document.get("type") == "Feature":
        items = [document]
    elif isinstance(document, dict) and document.get("type") in _GEOMETRIES:
        items = [{"type": "Feature", "geometry": document, "properties": {}}]
    else:
        raise ValueError(
            "expected a FeatureCollection, a Feature, a geometry or a list of Features"
        )
    for item in items:
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise ValueError(f"expected Features in the collection, found {str(item)[:60]!r}")
        yield item


def _class_name(properties: Any) -> str | None:
    """QuPath writes {"classification": {"name": ...}}; older tools a plain string."""
    if not isinstance(properties, dict):
        return None
    classification = properties.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name")
        return name if isinstance(name, str) else None
    if isinstance(classification, str):
        return classification
    return None


def _polygon_rings(geometry: Any, where: str) -> Iterator[list[np.ndarray]]:
    """Each polygon of a geometry as [exterior, *holes]."""
    if geometry is None:
        return
    if not isinstance(geometry, dict):
        raise ValueError(f"{where}: geometry is not an object")
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        for part in geometry.get("geometries") or []:
            yield from _polygon_rings(part, where)
        return
    if kind == "Polygon":
        yield [_ring(ring, where) for ring in _list(geometry.get("coordinates"), where)]
    elif kind == "MultiPolygon":
        for polygon in _list(geometry.get("coordinates"), where):
            yield [_ring(ring, where) for ring in _list(polygon, where)]
    elif kind in {"Point", "MultiPoint", "LineString", "MultiLineString"}:
        return
    else:
        raise ValueError(f"{where}: unknown geometry type {kind!r}")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: coordinates must be a non-empty list")
    return value


def _ring(ring: Any, where: str) -> np.ndarray:
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: a ring's coordinates are not numbers") from error
    if points.ndim != 2 or points.shape[1] < 2 or len(points) < 3 or not np.isfinite(points).all():
        raise ValueError(f"{where}: a ring must be a list of at least 3 [x, y] points")
    points = points[:, :2]
    if len(points) > 3 and np.array_equal(points[0], points[-1]):
        points = points[:-1]  # GeoJSON closes rings; the filler closes them itself
    return points


def patch_tumor_fraction(
    polygons: list[np.ndarray],
    coords: np.ndarray,
    patch_side_level0: int,
    resolution_level0: float | None = None,
) -> np.ndarray:
    """Share (float32, 0..1) of each patch square [x, x+side) x [y, y+side) inside the polygons.

    `coords` (N, 2) are level-0 top-left x, y; `resolution_level0` is level-0 px per sample
    (default side / 8, i.e. 64 samples per patch). Overlapping polygons count once."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(coords) == 0 or not polygons:
        return np.zeros(len(coords), np.float32)
    side = float(patch_side_level0)
    if side <= 0:
        raise HnmError(f"patch side must be positive (got {patch_side_level0})")
    samples = max(
        1, round(side / (side / 8 if resolution_level0 is None else float(resolution_level0)))
    )
    step = side / samples
    origin = coords.min(axis=0)
    extent = coords.max(axis=0) + side - origin
    while (extent[0] / step + 2) * (extent[1] / step + 2) > _MAX_MASK_PIXELS:
        if samples > 1:
            samples //= 2
            step = side / samples
        else:
            step *= 2  # patches smaller than a mask pixel: nearest-pixel sampling
    shape = (math.ceil(extent[1] / step) + 1, math.ceil(extent[0] / step) + 1)
    mask = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        rings = [np.asarray(polygon, dtype=np.float64), *getattr(polygon, "holes", [])]
        _fill(mask, [(ring[:, :2] - origin) / step for ring in rings])
    # Sample k of a patch sits at x + (k + 0.5) * side / samples: in mask units, (x - origin) / step
    # + (k + 0.5) * side / samples / step, which is a pixel centre when x - origin is a multiple of step.
    offsets = (np.arange(samples) + 0.5) * (side / samples) / step
    cols = np.floor((coords[:, 0:1] - origin[0]) / step + offsets[None, :]).astype(np.int64)
    rows = np.floor((coords[:, 1:2] - origin[1]) / step + offsets[None, :]).astype(np.int64)
    np.clip(cols, 0, shape[1] - 1, out=cols)
    np.clip(rows, 0, shape[0] - 1, out=rows)
    inside = mask[rows[:, :, None], cols[:, None, :]]
    return inside.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)


def _fill(mask: np.ndarray, rings: list[np.ndarray]) -> None:
    """OR into `mask` the pixels whose centres lie inside `rings` (even-odd, so holes cut out).

    Pixel (r, c) has its centre at (c + 0.5, r + 0.5) in ring units. An edge crosses row r if its
    end points lie on different sides of the centre line (half-open), and pixels from
    ceil(x - 0.5) on toggle, so a point exactly on an edge belongs to the region to its right."""
    starts = np.concatenate(rings)
    ends = np.concatenate([np.roll(ring, -1, axis=0) for ring in rings])
    height, width = mask.shape
    top = max(0, math.floor(starts[:, 1].min() - 0.5))
    bottom = min(height, math.ceil(starts[:, 1].max() + 0.5))
    left = max(0, math.floor(starts[:, 0].min() - 0.5))
    right = min(width, math.ceil(starts[:, 0].max() + 0.5))
    if bottom <= top or right <= left:
        return
    span = right - left
    chunk = max(1, _MAX_CROSSINGS // max(len(starts), span + 1))
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    for first in range(top, bottom, chunk):
        centres = np.arange(first, min(bottom, first + chunk)) + 0.5
        row_index, edge = np.nonzero(
            (y0[None, :] <= centres[:, None]) != (y1[None, :] <= centres[:, None])
        )
        if not len(edge):
            continue
        x = x0[edge] + (centres[row_index] - y0[edge]) / (y1[edge] - y0[edge]) * (
            x1[edge] - x0[edge]
        )
        at = np.clip(np.ceil(x - 0.5) - left, 0, span).astype(np.int64)
        toggles = np.bincount(row_index * (span + 1) + at, minlength=len(centres) * (span + 1))
        inside = (np.cumsum(toggles.reshape(len(centres), span + 1), axis=1)[:, :span] & 1).astype(
            bool
        )
        mask[first : first + len(centres), left:right] |= inside


def patch_labels(
    polygons: list[np.ndarray],
    coords: np.ndarray,
    patch_side_level0: int,
    min_fraction: float = 0.5,
) -> np.ndarray:
    """True for patches at least `min_fraction` inside the polygons (the usual tumor-patch rule)."""
    return patch_tumor_fraction(polygons, coords, patch_side_level0) >= min_fraction
