"""How much disk a run's features take, projected from a features file the code really writes.

A features file is HDF5: the (N, D) features, the (N, 2) int64 coordinates, the attributes and the
container's own overhead (superblock, object headers, chunk index), so its bytes per patch are
measured by writing one with the stage's own writer (hnm.io.h5io.FeatureWriter) at the slide size
of the cohort, never assumed to be D x itemsize. bench/bench_disk.py prints the projections.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hnm.extract.keep import kept_rounds
from hnm.io.h5io import FeatureWriter


@dataclass(frozen=True)
class FeatureFileCost:
    """The size of one slide's features file, as written."""

    patches: int
    dim: int
    dtype: str
    bytes: int

    @property
    def bytes_per_patch(self) -> float:
        return self.bytes / self.patches

    @property
    def payload_per_patch(self) -> int:
        """Features and coordinates alone: what the file would be without HDF5 around them."""
        return self.dim * np.dtype(self.dtype).itemsize + 2 * 8


def measure_features_file(
    patches: int, dim: int, dtype: str, folder: str | os.PathLike[str] | None = None
) -> FeatureFileCost:
    """Write one features file of `patches` x `dim` with FeatureWriter and return its size.

    The values are ReLU-like random numbers (the file is not compressed, so they do not change
    its size); the attributes are a real extraction's keys, so their overhead is counted too."""
    if patches < 1 or dim < 1:
        raise ValueError(f"a features file needs patches and dim >= 1 (got {patches}, {dim})")
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 100_000, size=(patches, 2))
    attrs = {
        "slide_id": "measured_slide_000",
        "slide_path": "/data/slides/measured_slide_000.svs",
        "tiles_file": "results/tiles/measured_slide_000.h5",
        "round": 0,
        "encoder_arch": "resnet18",
        "encoder_arch_kwargs": {},
        "encoder_file": "results/r0/encoder.pt",
        "encoder_source": "weights",
        "encoder_epoch": 0,
        "weights_sha256": "0" * 64,
        "feature_dim": dim,
        "mpp": 0.243,
        "target_mpp": 2.0,
        "patch_size": 224,
        "level": 2,
        "read_size": 230,
        "failed": False,
        "error": "",
        "decode_path": "gpu-nvjpeg",
        "decode_fallback_reason": "",
        "precision": "bf16",
        "throughput_img_s": 0.0,
        "seconds": 0.0,
    }
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        path = Path(scratch) / "measured_slide_000.h5"
        with FeatureWriter(path, dim, coords, attrs, dtype=dtype) as writer:
            for start in range(0, patches, 4096):
                rows = min(4096, patches - start)
                writer.append(np.maximum(rng.standard_normal((rows, dim), np.float32), 0))
        return FeatureFileCost(patches, dim, dtype, path.stat().st_size)


@dataclass(frozen=True)
class DiskProjection:
    """A run's features on disk: `slides` files of `cost` per round, rounds 0..`rounds`."""

    cost: FeatureFileCost
    slides: int
    rounds: int
    keep: int

    @property
    def per_round(self) -> int:
        return self.slides * self.cost.bytes

    @property
    def kept(self) -> int:
        """Rounds whose features are on disk when the run ends."""
        return len(kept_rounds(self.rounds, self.keep))

    @property
    def at_end(self) -> int:
        return self.kept * self.per_round

    @property
    def peak(self) -> int:
        """At most one round more than the kept ones while the run goes: a removed round's files
        stay until its probe ends, which may overlap the next round's extraction."""
        return min(self.rounds + 1, self.kept + (1 if self.keep else 0)) * self.per_round


def project_disk(cost: FeatureFileCost, slides: int, rounds: int, keep: int) -> DiskProjection:
    """The features disk of a run of `slides` slides like `cost`'s, rounds 0..`rounds`, keeping
    the latest `keep` rounds (0: all; extract.keep_rounds)."""
    if slides < 1 or rounds < 0 or keep < 0:
        raise ValueError(f"slides >= 1, rounds >= 0, keep >= 0 (got {slides}, {rounds}, {keep})")
    return DiskProjection(cost, slides, rounds, keep)
