"""Extraction of many small slides: one `hnm extract` process per slide against one for all.

Each process pays the interpreter, torch import, encoder load and (on a GPU) CUDA start-up before
its first patch; on demo-sized slides that start-up costs more than the patches. This writes
`--slides` demo slides with `hnm synth`, tiles them with `hnm tile` (neither timed), then times the
two ways of running `hnm extract` on the same slides and encoder, checks that they wrote the same
features, and prints the ratio. The workflow's `extract.slides_per_job` chooses between them.

    python bench/bench_extract_jobs.py                      # CPU, 12 demo slides
    python bench/bench_extract_jobs.py --device cuda --slides 24
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hnm.encoders import build_encoder, save_encoder_file  # noqa: E402
from hnm.io.h5io import read_features  # noqa: E402


def hnm(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "hnm", *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def make_slides(root: Path, count: int, side: int) -> list[tuple[str, Path, Path]]:
    """(slide id, slide file, tiles file) of `count` demo slides, half of them positive."""
    made = []
    for index in range(count):
        slide_id = f"s{index:03d}"
        slide, tiles = root / f"{slide_id}.tiff", root / f"{slide_id}.h5"
        hnm(
            "synth",
            "--slide-id",
            slide_id,
            "--label",
            str(index % 2),
            "--out",
            str(slide),
            "--annotation",
            str(root / f"{slide_id}.geojson"),
            "--width",
            str(side),
            "--height",
            str(side),
            "--tumor-regions",
            "2",
            "--mimic-regions",
            "2",
            "--tumor-size-um",
            "200",
        )
        hnm(
            "tile",
            "--slide",
            str(slide),
            "--slide-id",
            slide_id,
            "--out",
            str(tiles),
            "--qc",
            str(root / f"{slide_id}.png"),
            "--patch-size",
            "32",
            "--target-mpp",
            "2.0",
        )
        made.append((slide_id, slide, tiles))
    return made


def timed(calls: list[list[str]]) -> float:
    started = time.perf_counter()
    for call in calls:
        hnm(*call)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--side", type=int, default=2048, help="slide side in level-0 px")
    parser.add_argument("--arch", default="resnet_mini")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        slides = make_slides(root, args.slides, args.side)
        encoder = root / "encoder.pt"
        save_encoder_file(
            encoder, build_encoder(args.arch, {"norm": "batch"}, seed=0), source="random:0"
        )
        common = [
            "--encoder",
            str(encoder),
            "--round",
            "0",
            "--device",
            args.device,
            "--workers",
            "1",
            "--batch-size",
            "128",
        ]
        one_each = [
            [
                "extract",
                "--slide",
                str(slide),
                "--slide-id",
                slide_id,
                "--tiles",
                str(tiles),
                "--out",
                str(root / "each" / f"{slide_id}.h5"),
                *common,
            ]
            for slide_id, slide, tiles in slides
        ]
        together = [
            [
                "extract",
                "--slide",
                *(str(s) for _, s, _ in slides),
                "--slide-id",
                *(i for i, _, _ in slides),
                "--tiles",
                *(str(t) for _, _, t in slides),
                "--out",
                *(str(root / "all" / f"{i}.h5") for i, _, _ in slides),
                *common,
            ]
        ]
        per_slide = timed(one_each)
        batched = timed(together)
        patches = 0
        for slide_id, _, _ in slides:
            a, _, _ = read_features(root / "each" / f"{slide_id}.h5")
            b, _, _ = read_features(root / "all" / f"{slide_id}.h5")
            np.testing.assert_array_equal(a, b)
            patches += len(a)
    print(
        json.dumps(
            {
                "slides": args.slides,
                "patches": patches,
                "arch": args.arch,
                "device": args.device,
                "one_process_per_slide_s": round(per_slide, 2),
                "one_process_for_all_s": round(batched, 2),
                "speedup": round(per_slide / batched, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
