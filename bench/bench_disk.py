"""Projected feature disk per round and in all, float32 and float16, keeping every round or the
latest K (extract.feature_dtype, extract.keep_rounds), at two cohort shapes:

- Camelyon16: 3.0 million patches of 512-d ResNet-18 features (399 slides, the authors' split of
  216 train, 54 val and 129 test, so 7,519 patches a slide), rounds 0-20 (paper.yaml's 20 rounds:
  21 sets of features);
- 10,000 slides at 5x (2.0 um/px, 224 px patches), assuming Camelyon16's mean of about 7,500
  tissue patches a slide: 75 million patches, the same 21 rounds.

The bytes of a slide's file are measured, not computed: hnm.extract.disk writes one features file
of a slide's size per dtype with the stage's own writer and takes its size (features, coordinates,
attributes and HDF5's overhead). No arguments:

    python bench/bench_disk.py
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hnm.extract.disk import measure_features_file, project_disk  # noqa: E402

DIM = 512
ROUNDS = 20
SHAPES = {
    "Camelyon16 (399 slides x 7,519 patches = 3.0 M)": (399, 7519),
    "10,000 slides x 7,500 patches = 75 M (5x)": (10_000, 7500),
}
KEEP = (0, 2, 1)


def gigabytes(count: int) -> str:
    return f"{count / 1e9:,.1f} GB" if count < 1e12 else f"{count / 1e12:,.2f} TB"


def main() -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}".rstrip())
    print(
        f"commit: {commit or 'unknown'}; h5py {h5py.__version__}, HDF5 "
        f"{h5py.version.hdf5_version}; {DIM}-d features, rounds 0-{ROUNDS}"
    )
    for shape, (slides, patches) in SHAPES.items():
        print(f"\n{shape}")
        for dtype in ("float32", "float16"):
            cost = measure_features_file(patches, DIM, dtype)
            print(
                f"  {dtype}: one slide's file {cost.bytes:,} bytes = "
                f"{cost.bytes_per_patch:,.1f} bytes/patch (features + coords alone "
                f"{cost.payload_per_patch:,})"
            )
            for keep in KEEP:
                projection = project_disk(cost, slides, ROUNDS, keep)
                label = "keep all" if keep == 0 else f"keep {keep}"
                rounds = f"{projection.kept} round{'s' if projection.kept > 1 else ''}"
                print(
                    f"    {label:>8}: {gigabytes(projection.per_round)} a round, "
                    f"{gigabytes(projection.at_end)} at the end ({rounds}), "
                    f"{gigabytes(projection.peak)} at most during the run"
                )


if __name__ == "__main__":
    main()
