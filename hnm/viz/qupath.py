"""Patch scores as a GeoJSON FeatureCollection that QuPath imports (File > Import objects, or drag
the file onto the open slide): one square tile per patch in level-0 px, classified "hnm patch",
with the score, logit and patch index as measurements (Measure > Show measurement maps colours
the tiles by score)."""

from __future__ import annotations

import json
import os

import numpy as np

from hnm.core.atomic import atomic_path

TILE_CLASS = "hnm patch"


def feature_collection(
    slide_id: str,
    coords: np.ndarray,
    side_level0: float,
    idx: np.ndarray,
    scores: np.ndarray,
    logits: np.ndarray,
) -> dict:
    side = float(side_level0)
    features = []
    for (x, y), index, score, logit in zip(np.asarray(coords, float), idx, scores, logits):
        x, y = float(x), float(y)
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "tile",
                    "name": f"{slide_id} #{int(index)}",
                    "classification": {"name": TILE_CLASS, "color": [255, 200, 0]},
                    "measurements": {
                        "hnm score": float(score),
                        "hnm logit": float(logit),
                        "hnm patch index": int(index),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike[str], collection: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(collection, separators=(",", ":")))
