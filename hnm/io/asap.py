"""Lesion annotations in ASAP's XML (as Camelyon16 ships them) turned into the GeoJSON that
hnm.io.annotations reads.

An ASAP file lists polygons in level-0 pixels, each in a group. Camelyon16 marks tumor with the
groups `_0` and `_1` (training) or `Tumor` / `metastases` (testing), and non-tumor tissue drawn
inside a tumor region with `_2` or `Exclusion`. An exclusion is cut out of every tumor polygon
that wholly contains it (a GeoJSON hole), so the pipeline does not count it as tumor. The reader
fills each polygon with the even-odd rule and unions polygons, so a hole must lie inside its own
exterior: an exclusion that only partly overlaps a tumor polygon cannot be cut out that way and is
left out with a warning (the tumor region is then counted whole). Anything read leniently (an
ungrouped polygon, a spline taken by its control points, points skipped) is said in the log.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hnm.core.errors import HnmError

log = logging.getLogger(__name__)

# Group names, case-folded.
TUMOR_GROUPS = frozenset({"_0", "_1", "tumor", "metastases"})
EXCLUSION_GROUPS = frozenset({"_2", "exclusion"})
# ASAP's name for an annotation in no group; in a file of lesion annotations it marks a lesion.
UNGROUPED = frozenset({"none", ""})
_AREA_TYPES = frozenset({"polygon", "rectangle", "spline"})
_POINT_TYPES = frozenset({"dot", "pointset", "measurement"})
_MAX_CROSSINGS = 4_000_000  # points x edges evaluated at once by the point-in-polygon test


@dataclass
class AsapRegions:
    """The polygons of one file, as (K, 2) float64 arrays of level-0 x, y."""

    tumor: list[np.ndarray] = field(default_factory=list)
    tumor_names: list[str] = field(default_factory=list)
    exclusions: list[np.ndarray] = field(default_factory=list)


def read_asap(content: bytes, source: str) -> AsapRegions:
    """Tumor and exclusion polygons of an ASAP XML document; `source` names it in messages."""
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as error:
        raise HnmError(f"annotation file {source} is not readable XML ({error})") from error
    if root.tag != "ASAP_Annotations":
        raise HnmError(
            f"annotation file {source} is not an ASAP annotation file (its root element is "
            f"<{root.tag}>, expected <ASAP_Annotations>)"
        )
    regions = AsapRegions()
    lenient: dict[str, int] = {}
    for number, element in enumerate(root.iter("Annotation")):
        name = element.get("Name") or f"annotation {number}"
        group = (element.get("PartOfGroup") or "").strip()
        kind = (element.get("Type") or "polygon").strip().lower()
        if kind in _POINT_TYPES:
            _count(lenient, f"{kind} annotations skipped (no area)")
            continue
        if kind not in _AREA_TYPES:
            raise HnmError(
                f"annotation file {source}: {name} has Type '{element.get('Type')}', which is not "
                "a region (Polygon, Rectangle or Spline)"
            )
        points = _coordinates(element, f"{source}: {name}")
        if len(np.unique(points, axis=0)) < 3:
            _count(lenient, "polygons of fewer than 3 distinct points skipped")
            continue
        if kind == "spline":
            _count(lenient, "splines taken as the polygon of their control points")
        folded = group.lower()
        if folded in EXCLUSION_GROUPS:
            regions.exclusions.append(points)
            continue
        if folded in UNGROUPED:
            _count(lenient, "ungrouped polygons (group 'None') taken as tumor")
        elif folded not in TUMOR_GROUPS:
            raise HnmError(
                f"annotation file {source}: {name} is in group '{group}', which is neither tumor "
                f"({', '.join(sorted(TUMOR_GROUPS))}) nor exclusion "
                f"({', '.join(sorted(EXCLUSION_GROUPS))})"
            )
        regions.tumor.append(points)
        regions.tumor_names.append(name)
    for what, count in lenient.items():
        log.warning("%s: %d %s", source, count, what)
    return regions


def _count(counts: dict[str, int], what: str) -> None:
    counts[what] = counts.get(what, 0) + 1


def _coordinates(element: ElementTree.Element, where: str) -> np.ndarray:
    """The (K, 2) vertices in their Order (document order where it is missing)."""
    vertices = []
    for position, coordinate in enumerate(element.iter("Coordinate")):
        order = coordinate.get("Order")
        try:
            x, y = (_number(coordinate.get(axis)) for axis in ("X", "Y"))
            rank = float(order) if order is not None else float(position)
        except (TypeError, ValueError) as error:
            raise HnmError(
                f"annotation file {where}: coordinate {position} is not a pair of numbers "
                f"(X={coordinate.get('X')!r}, Y={coordinate.get('Y')!r})"
            ) from error
        vertices.append((rank, x, y))
    vertices.sort(key=lambda vertex: vertex[0])
    points = np.array([(x, y) for _, x, y in vertices], dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(points).all():
        raise HnmError(f"annotation file {where}: a coordinate is not finite")
    return points


def _number(text: str | None) -> float:
    """A coordinate; files written under a decimal-comma locale read '1234,5'."""
    if text is None:
        raise ValueError("missing")
    try:
        return float(text)
    except ValueError:
        return float(text.replace(",", "."))


def to_geojson(regions: AsapRegions, class_name: str, source: str) -> dict[str, Any]:
    """A FeatureCollection with one Polygon of class `class_name` per tumor polygon, each with the
    exclusions it wholly contains as holes (level-0 pixel coordinates, rings closed)."""
    holes: list[list[np.ndarray]] = [[] for _ in regions.tumor]
    for exclusion in regions.exclusions:
        inside = [_inside(exclusion, tumor) for tumor in regions.tumor]
        whole = [index for index, flags in enumerate(inside) if flags.all()]
        for index in whole:
            holes[index].append(exclusion)
        partial = [index for index, flags in enumerate(inside) if flags.any() and not flags.all()]
        if partial and not whole:
            log.warning(
                "%s: an exclusion region only partly overlaps the tumor polygon(s) %s and is left "
                "out, so that tumor is counted whole there",
                source,
                ", ".join(regions.tumor_names[index] for index in partial),
            )
        elif not whole:
            log.warning("%s: an exclusion region lies outside every tumor polygon; ignored", source)
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [_closed(ring) for ring in (exterior, *ring_holes)],
            },
            "properties": {
                "objectType": "annotation",
                "name": name,
                "classification": {"name": class_name},
            },
        }
        for exterior, name, ring_holes in zip(regions.tumor, regions.tumor_names, holes)
    ]
    return {"type": "FeatureCollection", "features": features}


def _closed(ring: np.ndarray) -> list[list[float]]:
    points = ring.tolist()
    if points[0] != points[-1]:
        points.append(points[0])
    return points


def _inside(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Whether each point lies inside `ring` (even-odd rule, a ray towards +x)."""
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    result = np.zeros(len(points), dtype=bool)
    chunk = max(1, _MAX_CROSSINGS // len(ring))
    for first in range(0, len(points), chunk):
        x = points[first : first + chunk, 0:1]
        y = points[first : first + chunk, 1:2]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        result[first : first + chunk] = (crosses & (x < at)).sum(axis=1) % 2 == 1
    return result
