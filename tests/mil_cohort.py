"""Synthetic feature cohorts with known patch truth, for tests and benchmarks of MIL training.

Normal patches are N(0, I) in d dimensions; tumour patches add `signal` along one fixed unit
direction. Positive bags hold a `tumour_fraction` of tumour patches, negative bags none, so a
working aggregator must find the few patches that carry the label (the MIL setting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hnm.io.h5io import FeatureWriter


@dataclass(frozen=True)
class SyntheticBag:
    slide_id: str
    split: str
    label: int
    features: np.ndarray  # (N, d) float32
    tumour: np.ndarray  # (N,) bool patch truth


def make_bags(
    counts: dict[str, tuple[int, int]],
    dim: int = 32,
    mean_patches: int = 60,
    tumour_fraction: float = 0.15,
    signal: float = 2.5,
    seed: int = 0,
) -> list[SyntheticBag]:
    """Bags per split; counts maps split -> (n positive, n negative)."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    bags: list[SyntheticBag] = []
    for split, (n_pos, n_neg) in counts.items():
        for k, label in enumerate([1] * n_pos + [0] * n_neg):
            size = int(rng.integers(max(1, mean_patches // 2), mean_patches * 3 // 2 + 1))
            features = rng.standard_normal((size, dim)).astype(np.float32)
            tumour = np.zeros(size, dtype=bool)
            if label:
                n_tumour = max(1, int(round(tumour_fraction * size)))
                tumour[rng.choice(size, n_tumour, replace=False)] = True
                features[tumour] += (signal * direction).astype(np.float32)
            bags.append(
                SyntheticBag(
                    f"{split}_{'tumor' if label else 'normal'}_{k:03d}",
                    split,
                    label,
                    features,
                    tumour,
                )
            )
    return bags


def write_cohort(
    bags: list[SyntheticBag],
    features_dir: str | os.PathLike[str],
    sheet_path: str | os.PathLike[str],
) -> pd.DataFrame:
    """One FeatureWriter file per bag and a normalised sheet TSV pointing at them."""
    features_dir = Path(features_dir)
    rows = []
    for bag in bags:
        coords = np.stack([np.arange(len(bag.features)) * 224, np.zeros(len(bag.features))], 1)
        path = features_dir / f"{bag.slide_id}.h5"
        with FeatureWriter(
            path,
            bag.features.shape[1],
            coords,
            {"encoder": "synthetic", "patch_size": 224, "target_mpp": 0.5, "mpp": 0.5},
        ) as writer:
            writer.append(bag.features)
        rows.append(
            {
                "slide_id": bag.slide_id,
                "path": str(path.resolve()),
                "label": bag.label,
                "split": bag.split,
                "mpp": "",
                "annotation": "",
            }
        )
    sheet = pd.DataFrame(rows)
    Path(sheet_path).parent.mkdir(parents=True, exist_ok=True)
    sheet.to_csv(sheet_path, sep="\t", index=False)
    return sheet
