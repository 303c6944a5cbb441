"""Tiling time per slide, split by step, on a large slide (a script, not a test).

    python bench/bench_tiling.py                       # makes a 50,000 x 50,000 px synthetic slide
    python bench/bench_tiling.py --slide X.svs [--mpp 0.25]
    python bench/bench_tiling.py --workdir /tmp/b --keep   # reuse the synthetic slide next time

Reports seconds for open (+ metadata and read plan), tissue detection (whole-level read, then
segmentation), grid (cells and tissue fractions), QC image, and writing, plus patches/s over the
whole job; then the same low-resolution read by openslide, to show what pyvips saves; then the
CLI end to end in a fresh process (imports included), as Snakemake runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hnm.tile import qc  # noqa: E402
from hnm.tile.grid import tile_slide, write_tiles_file  # noqa: E402
from hnm.tile.settings import TileSettings  # noqa: E402
from hnm.tile.stage import qc_image  # noqa: E402
from hnm.tile.tissue import _read_openslide, read_downsampled, segment_tissue  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", help="slide to tile (default: make a synthetic one)")
    parser.add_argument("--mpp", type=float, default=None, help="mpp override for --slide")
    parser.add_argument("--width", type=int, default=50_000)
    parser.add_argument("--height", type=int, default=50_000)
    parser.add_argument(
        "--workdir", help="where the synthetic slide and outputs go (default: temp)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the synthetic slide for reuse")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--target-mpp", type=float, default=1.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for making the synthetic slide",
    )
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_tiling_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"machine": f"{os.cpu_count()} CPU cores", "python": sys.version}

    slide = (
        Path(args.slide) if args.slide else workdir / f"synthetic_{args.width}x{args.height}.tiff"
    )
    if not slide.exists():
        from hnm.demo.synth import write_synthetic_slide

        print(f"making {slide} ({args.width} x {args.height} px) ...", flush=True)
        started = time.perf_counter()
        write_synthetic_slide(
            slide,
            width=args.width,
            height=args.height,
            mpp=0.5,
            label=1,
            seed=0,
            workers=args.workers,
        )
        report["synth_s"] = round(time.perf_counter() - started, 1)
        print(f"  made in {report['synth_s']} s", flush=True)
    report["slide"] = str(slide)
    report["slide_bytes"] = slide.stat().st_size

    settings = TileSettings(patch_size=args.patch_size, target_mpp=args.target_mpp)
    grid, tissue_params = settings.grid(), settings.tissue()
    started_all = time.perf_counter()
    result = tile_slide(slide, "bench", grid, tissue_params, args.mpp)
    timings = dict(result.attrs["timings"])

    started = time.perf_counter()
    image = qc_image(result, slide, "bench", ["bench"])
    timings["qc_s"] = time.perf_counter() - started

    started = time.perf_counter()
    qc.write_png(workdir / "bench.png", image)
    write_tiles_file(workdir / "bench.h5", result.coords, result.attrs, result.tissue_fraction)
    timings["write_s"] = time.perf_counter() - started
    total = time.perf_counter() - started_all

    # The tissue step split into its read and its segmentation, and the read again by openslide.
    tissue = result.tissue
    started = time.perf_counter()
    lowres = read_downsampled(
        result.osr, str(slide), "bench", tissue_params.tissue_mpp / result.attrs["mpp"]
    )
    read_fast = time.perf_counter() - started
    started = time.perf_counter()
    segment_tissue(lowres.rgb, tissue.mask_mpp, tissue_params)
    segment = time.perf_counter() - started
    factor = int(round(lowres.downsample / result.osr.level_downsamples[lowres.level]))
    started = time.perf_counter()
    _read_openslide(result.osr, str(slide), "bench", lowres.level, factor)
    read_openslide = time.perf_counter() - started
    result.osr.close()

    n_patches = int(result.attrs["n_patches"])
    report.update(
        dimensions=list(result.dimensions),
        mpp=result.attrs["mpp"],
        grid_cells=result.attrs["n_grid"],
        patches=n_patches,
        mask_shape=list(tissue.mask.shape),
        mask_mpp=round(tissue.mask_mpp, 3),
        tissue_level=tissue.level,
        tissue_reader=tissue.reader,
        seconds={key.removesuffix("_s"): round(value, 3) for key, value in timings.items()},
        total_s=round(total, 3),
        patches_per_s=round(n_patches / total, 1),
        tissue_split_s={"read": round(read_fast, 3), "segment": round(segment, 3)},
        lowres_read_s={lowres.reader: round(read_fast, 3), "openslide": round(read_openslide, 3)},
    )

    command = [
        sys.executable,
        "-m",
        "hnm",
        "tile",
        "--slide",
        str(slide),
        "--slide-id",
        "bench",
        "--out",
        str(workdir / "cli.h5"),
        "--qc",
        str(workdir / "cli.png"),
        "--patch-size",
        str(args.patch_size),
        "--target-mpp",
        str(args.target_mpp),
    ]
    if args.mpp is not None:
        command += ["--mpp", str(args.mpp)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    report["cli_wall_s"] = round(time.perf_counter() - started, 3)

    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if not args.slide and not args.keep:
        slide.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
