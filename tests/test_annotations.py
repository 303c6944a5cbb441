"""Reading GeoJSON ground truth and the share of each patch it covers, against hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hnm.core.errors import HnmError
from hnm.io.annotations import (
    Polygon,
    load_polygons,
    load_polygons_by_class,
    patch_labels,
    patch_tumor_fraction,
)


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(geometry: dict, name: str | None = "Tumor") -> dict:
    properties = {} if name is None else {"classification": {"name": name, "color": [200, 0, 0]}}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_half_full_and_disjoint_patches() -> None:
    half = [np.array([[0, 0], [64, 0], [64, 128], [0, 128]], float)]
    coords = np.array([[0, 0], [-64, 0], [32, 0], [128, 0], [0, 500], [-128, -128]])
    fractions = patch_tumor_fraction(half, coords, 128)
    assert fractions.dtype == np.float32
    # [0,128): left half; [-64,64): right half; [32,160): 32 of 128 px; the rest: outside
    np.testing.assert_allclose(fractions, [0.5, 0.5, 0.25, 0.0, 0.0, 0.0], atol=1e-6)
    full = [np.array([[-10, -10], [300, -10], [300, 300], [-10, 300]], float)]
    np.testing.assert_allclose(patch_tumor_fraction(full, coords[:1], 128), [1.0])


def test_diagonal_triangle_covers_half_within_sampling_error() -> None:
    triangle = [np.array([[0, 0], [256, 0], [0, 256]], float)]
    assert patch_tumor_fraction(triangle, np.array([[0, 0]]), 256)[0] == pytest.approx(
        0.5, abs=1 / 16
    )
    fine = patch_tumor_fraction(triangle, np.array([[0, 0]]), 256, resolution_level0=2.0)[0]
    assert fine == pytest.approx(0.5, abs=1 / 128)


def test_overlapping_polygons_count_once() -> None:
    a = np.array([[0, 0], [96, 0], [96, 128], [0, 128]], float)
    b = np.array([[32, 0], [128, 0], [128, 128], [32, 128]], float)
    assert patch_tumor_fraction([a, b], np.array([[0, 0]]), 128)[0] == pytest.approx(1.0)


def test_multipolygon_and_hole_from_geojson(tmp_path: Path) -> None:
    multipolygon = {
        "type": "MultiPolygon",
        "coordinates": [[_square(0, 0, 64, 64)], [_square(192, 0, 256, 64)]],
    }
    # a 256 px square with a 128 px hole in its middle
    with_hole = {
        "type": "Polygon",
        "coordinates": [_square(0, 256, 256, 512), _square(64, 320, 192, 448)],
    }
    path = _write(
        tmp_path / "a.geojson",
        {
            "type": "FeatureCollection",
            "features": [_feature(multipolygon), _feature(with_hole, "tumor")],
        },
    )
    polygons = load_polygons(path)
    assert len(polygons) == 3
    assert all(isinstance(p, np.ndarray) and p.shape[1] == 2 for p in polygons)
    assert [len(p.holes) for p in polygons] == [0, 0, 1]
    assert len(polygons[0]) == 4  # the closing vertex is dropped
    coords = np.array([[0, 0], [128, 0], [0, 256], [64, 320], [128, 384]])
    fractions = patch_tumor_fraction(polygons, coords, 128)
    # patch 1 holds one 64x64 part (1/4), patch 2 the other (1/4); patch 3 = 256-square corner minus
    # the hole's corner: 1 - (64*64)/(128*128); patch 4 is the hole; patch 5 has another corner of it
    np.testing.assert_allclose(fractions, [0.25, 0.25, 0.75, 0.0, 0.75], atol=1e-6)
    np.testing.assert_array_equal(
        patch_labels(polygons, coords, 128, min_fraction=0.5), [False, False, True, False, True]
    )
    np.testing.assert_array_equal(
        patch_labels(polygons, coords, 128, min_fraction=0.25), [True, True, True, False, True]
    )


def test_class_matching_and_unclassified_features(tmp_path: Path) -> None:
    square = {"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]}
    document = [  # QuPath can export a bare list of features
        _feature(square, "TUMOR"),
        _feature(square, "Tissue"),
        _feature(square, None),  # no class: counts as the default class, Tumor
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
        {"type": "Feature", "geometry": None, "properties": {"classification": "Tumor"}},
        {"type": "Feature", "geometry": square, "properties": {"classification": "tumor"}},
    ]
    path = _write(tmp_path / "b.geojson", document)
    assert len(load_polygons(path)) == 3
    assert len(load_polygons(path, "tissue")) == 1
    assert load_polygons(path, "Mimic") == []
    by_class = load_polygons_by_class(path, ["Tumor", "tissue", "Mimic", "tumor"])
    assert {name: len(found) for name, found in by_class.items()} == {
        "Tumor": 3,
        "tissue": 1,
        "Mimic": 0,
        "tumor": 3,
    }
    single = _write(tmp_path / "c.geojson", square)  # a bare geometry counts as Tumor
    assert len(load_polygons(single)) == 1


def test_polygon_view_keeps_holes() -> None:
    polygon = Polygon(np.zeros((4, 2)), [np.ones((3, 2))])
    assert len(polygon[:2].holes) == 1
    assert np.asarray(polygon).shape == (4, 2)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not readable JSON"),
        ('{"type": "Topology"}', "not valid GeoJSON"),
        ('{"type": "FeatureCollection", "features": 3}', "not valid GeoJSON"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}]',
            "not valid GeoJSON",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}]',
            "at least 3",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}}]',
            "unknown geometry type",
        ),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(HnmError, match=expected) as caught:
        load_polygons(path)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HnmError, match="not found") as caught:
        load_polygons(tmp_path / "absent.geojson")
    assert "absent.geojson" in str(caught.value)


def test_empty_inputs() -> None:
    assert patch_tumor_fraction([], np.array([[0, 0]]), 64).tolist() == [0.0]
    assert patch_tumor_fraction([np.zeros((3, 2))], np.zeros((0, 2)), 64).shape == (0,)
    with pytest.raises(HnmError, match="patch side"):
        patch_tumor_fraction([np.ones((3, 2))], np.array([[0, 0]]), 0)


def test_many_patches_on_a_big_grid_agree_with_the_area() -> None:
    """100k patches: the summed coverage of a disc equals its area (to sampling error)."""
    side = 128
    grid = np.stack(np.meshgrid(np.arange(317) * side, np.arange(317) * side), axis=-1).reshape(
        -1, 2
    )
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    radius, centre = 12000.0, 20000.0
    disc = np.stack([centre + radius * np.cos(theta), centre + radius * np.sin(theta)], axis=1)
    fractions = patch_tumor_fraction([disc], grid, side)
    assert len(fractions) == 317 * 317
    polygon_area = 0.5 * radius**2 * 720 * np.sin(2 * np.pi / 720)
    assert fractions.sum() * side**2 == pytest.approx(polygon_area, rel=2e-3)
    assert set(np.unique(fractions[fractions > 0])) >= {1.0}
