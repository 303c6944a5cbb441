"""A cohort's bags of patch features, loaded once and kept resident on the training device.

All bags live in ONE (total patches, d) float32 tensor and each bag is a slice of it: a training
step then costs a view, not a file read, a copy or a DataLoader round trip, and on a GPU the whole
cohort (Camelyon16 at 512-d: about 2M patches, 4 GB) is read from host memory once per job.
The tensor is preallocated from the files' shapes so peak host memory is one slide, not two cohorts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from hnm.core.errors import HnmError
from hnm.io.h5io import SlideData, open_slide, read_feature_rows
from hnm.mil.batch import BagBatch, make_batch
from hnm.mil.files import FAILED_UPSTREAM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bag:
    slide_id: str
    split: str
    label: int
    start: int  # rows [start, stop) of Cohort.features
    stop: int
    # level-0 top-left x, y of each patch (rows of the feature file) and the patch side in level-0
    # px, so scores can be written with their positions
    coords: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), compare=False)
    patch_level0: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class Cohort:
    features: torch.Tensor  # (total patches, d), on the training device
    bags: list[Bag]
    excluded: list[dict[str, str]] = field(default_factory=list)
    identities: list[dict[str, Any]] = field(default_factory=list)
    _ones_row: torch.Tensor | None = field(default=None, repr=False)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def bag_features(self, index: int) -> torch.Tensor:
        bag = self.bags[index]
        return self.features[bag.start : bag.stop]

    def batch(self, indices: Sequence[int]) -> BagBatch:
        """The given bags as one BagBatch of views: no feature row is copied."""
        return make_batch([self.bag_features(int(i)) for i in indices], self._ones())

    def _ones(self) -> torch.Tensor:
        """A device row of True as long as the largest bag, made once: masks are views of it."""
        if self._ones_row is None:
            longest = max((bag.size for bag in self.bags), default=1)
            self._ones_row = torch.ones(longest, dtype=torch.bool, device=self.features.device)
        return self._ones_row

    def indices(self, split: str, label: int | None = None) -> np.ndarray:
        return np.array(
            [
                i
                for i, bag in enumerate(self.bags)
                if bag.split == split and (label is None or bag.label == label)
            ],
            dtype=np.int64,
        )


def load_cohort(
    sheet: pd.DataFrame, feature_files: Mapping[str, SlideData], device: torch.device
) -> Cohort:
    """Every slide of the sheet whose features are usable; failed or empty files are excluded.

    `feature_files` maps slide ids to the files the job was given (hnm.io.h5io.files_by_slide);
    a sheet slide without one is a missing input."""
    planned: list[tuple[pd.Series, SlideData, int]] = []
    excluded: list[dict[str, Any]] = []
    identities: list[dict[str, Any]] = []
    missing: list[str] = []
    dim: int | None = None
    dim_source = ""
    for _, row in sheet.iterrows():
        slide_id = str(row["slide_id"])
        path = feature_files.get(slide_id)
        if path is None or not path.exists():
            missing.append(f"{slide_id}: {path or 'not passed'}")
            continue
        stat = path.stat()
        rows, width, reason, seconds, failure = _inspect(path, slide_id)
        identities.append(
            {
                "slide": slide_id,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "patches": rows,
                "extract_seconds": seconds,
            }
        )
        if reason:
            log.warning("excluding slide %s (%s): %s", slide_id, path, reason)
            excluded.append(
                {"slide_id": slide_id, "split": str(row["split"]), "reason": reason, **failure}
            )
            continue
        if dim is None:
            dim, dim_source = width, slide_id
        elif width != dim:
            raise HnmError(
                f"feature file {path} of slide '{slide_id}' has {width}-d features but "
                f"'{dim_source}' has {dim}-d; all slides of a round must use the same encoder"
            )
        planned.append((row, path, rows))
    if missing:
        raise HnmError(
            f"{len(missing)} feature file(s) of sheet slides are missing: "
            + "; ".join(missing[:10])
            + ("; ..." if len(missing) > 10 else "")
        )
    if not planned:
        raise HnmError("no usable feature files: every slide failed or is empty")
    total = sum(rows for _, _, rows in planned)
    features = torch.empty((total, dim or 0), dtype=torch.float32, device=device)
    bags: list[Bag] = []
    start = 0
    for row, path, rows in planned:
        with open_slide(path) as handle:
            block = read_feature_rows(handle["features"])  # float32, either dtype
            coords = _coords(handle, rows)
            side = patch_level0(dict(handle["features"].attrs))
        features[start : start + rows].copy_(torch.from_numpy(block))
        bags.append(
            Bag(
                str(row["slide_id"]),
                str(row["split"]),
                int(row["label"]),
                start,
                start + rows,
                coords,
                side,
            )
        )
        start += rows
    log.info(
        "loaded %d bags (%d patches, %d-d) onto %s; %d slide(s) excluded",
        len(bags),
        total,
        dim,
        device,
        len(excluded),
    )
    return Cohort(features, bags, excluded, identities)


def patch_level0(attrs: Mapping[str, Any]) -> int:
    """A patch's side in level-0 px, from a feature file's attributes (as tiling computes it:
    patch_size px at target_mpp um/px on a slide of mpp um/px); 0 if the attributes lack it."""
    try:
        side = float(attrs["patch_size"]) * float(attrs["target_mpp"]) / float(attrs["mpp"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0
    return int(round(side)) if np.isfinite(side) and side > 0 else 0


def _coords(handle: h5py.Group, rows: int) -> np.ndarray:
    """The feature file's (rows, 2) level-0 x, y; -1 where a file has none (older or foreign)."""
    if "coords" in handle and handle["coords"].shape == (rows, 2):
        return np.asarray(handle["coords"][:], dtype=np.int64)
    return np.full((rows, 2), -1, dtype=np.int64)


def _inspect(path: SlideData, slide_id: str) -> tuple[int, int, str, float, dict[str, Any]]:
    """(rows, feature dim, reason to exclude or "", extraction seconds, failure) without reading
    the features; the seconds are what the extraction stage recorded for the slide (0 if none).

    `failure` is what the file says of a slide skipped upstream (failed, error, slide_path,
    round), kept in the MIL's excluded_slides: with extract.keep_rounds the file itself is removed
    after this round, and `hnm failures` then reads the skip from there."""
    try:
        with open_slide(path) as handle:
            if "features" not in handle:
                raise HnmError(
                    f"feature file {path} of slide '{slide_id}' has no `features` dataset; "
                    "re-run extraction for this slide"
                )
            dataset = handle["features"]
            failed = dataset.attrs.get("failed", False)
            error = dataset.attrs.get("error", "")
            slide_path = dataset.attrs.get("slide_path", "")
            round_ = dataset.attrs.get("round")
            shape = dataset.shape
            seconds = float(dataset.attrs.get("seconds", 0.0))
    except OSError as error_:
        raise HnmError(
            f"feature file {path} of slide '{slide_id}' cannot be read ({error_}); "
            "delete it and re-run extraction for this slide"
        ) from error_
    error, slide_path = (
        v.decode() if isinstance(v, bytes) else str(v) for v in (error, slide_path)
    )
    if bool(failed):
        failure = {
            "failed": True,
            "error": error,
            "slide_path": slide_path,
            "round": None if round_ is None else int(round_),
        }
        return 0, 0, f"{FAILED_UPSTREAM}{error or 'no reason given'}", seconds, failure
    if len(shape) != 2:
        raise HnmError(f"feature file {path} of slide '{slide_id}' has features of shape {shape}")
    if shape[0] == 0:
        return 0, int(shape[1]), "no patches (empty feature file)", seconds, {"failed": False}
    return int(shape[0]), int(shape[1]), "", seconds, {"failed": False}
