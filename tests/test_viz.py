"""The pictures' building blocks: QuPath export round-trips through the annotation reader, the
mined-slide choice is deterministic, the score overlay lands where the patches are."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hnm.io.annotations import load_polygons_by_class
from hnm.viz.mined import choose_slides
from hnm.viz.qupath import TILE_CLASS, feature_collection, write_geojson
from hnm.viz.slides import Thumbnail, nice_length, score_image


def test_qupath_export_round_trips_to_the_patch_positions(tmp_path) -> None:
    coords = np.array([[0, 0], [256, 0], [512, 768], [1024, 2048]], dtype=np.int64)
    idx = np.array([0, 1, 5, 9])
    scores = np.array([0.1, 0.9, 0.5, 0.25])
    path = tmp_path / "slide.geojson"
    write_geojson(path, feature_collection("slide", coords, 256, idx, scores, np.log(scores)))

    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection"
    for feature, score in zip(document["features"], scores):
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5  # closed, as GeoJSON requires
        assert feature["properties"]["objectType"] == "tile"
        assert feature["properties"]["measurements"]["hnm score"] == score

    polygons = load_polygons_by_class(path, [TILE_CLASS])[TILE_CLASS]
    assert len(polygons) == len(coords)
    corners = np.array([polygon.min(axis=0) for polygon in polygons])
    sides = np.array([np.ptp(polygon, axis=0) for polygon in polygons])
    np.testing.assert_array_equal(corners, coords)
    np.testing.assert_array_equal(sides, 256)


def test_mined_slides_are_chosen_by_counts_then_id() -> None:
    rows = [("b", "hardneg")] * 3 + [("a", "hardneg")] * 3 + [("c", "hardneg")]
    rows += [("t2", "pos")] * 5 + [("t1", "pos")] * 2 + [("t1", "curriculum")]
    sets = pd.DataFrame(rows, columns=["slide_id", "set"])
    assert choose_slides(sets, 2) == ["a", "b", "t2", "t1"]
    assert choose_slides(sets.sample(frac=1, random_state=0), 1) == ["a", "t2"]


def test_score_image_covers_each_patch_at_thumbnail_scale() -> None:
    thumb = Thumbnail(np.zeros((100, 200, 3), np.uint8), downsample=10.0, dimensions=(2000, 1000))
    grid = score_image(thumb, np.array([[0, 0], [1000, 500]]), 100, np.array([0.2, 0.8]))
    assert np.allclose(grid[0:10, 0:10], 0.2) and np.allclose(grid[50:60, 100:110], 0.8)
    assert np.isnan(grid).sum() == grid.size - 200


def test_scale_bar_lengths_are_round() -> None:
    assert [nice_length(v) for v in (0.7, 3, 180, 999, 4500)] == [0.5, 2, 100, 500, 2000]
