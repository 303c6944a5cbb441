"""`hnm synth`: write one synthetic demo slide (pyramidal JPEG BigTIFF) and its GeoJSON ground truth.

The slide's random stream comes from (--seed, --slide-id), so every slide of a demo cohort differs,
and the same cohort seed rebuilds the same files byte for byte. The workflow passes the `demo`
settings of config/config.yaml (2048 px slides); alone, the defaults make a 4096 px square at
0.5 um/px, which the demo's tiling reads at 2.0 um/px (level 2) in 32 px patches.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time

log = logging.getLogger("hnm.demo.synth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slide-id", required=True, help="slide id; with --seed it picks the slide's random stream"
    )
    parser.add_argument(
        "--label",
        type=int,
        choices=(0, 1),
        required=True,
        help="1 = tumor (has tumor regions), 0 = normal",
    )
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default %(default)s)")
    parser.add_argument("--out", required=True, help="slide to write (.tiff)")
    parser.add_argument("--annotation", required=True, help="ground truth GeoJSON to write")
    group = parser.add_argument_group("slide")
    group.add_argument(
        "--width", type=int, default=4096, help="level-0 width in px (default %(default)s)"
    )
    group.add_argument(
        "--height", type=int, default=4096, help="level-0 height in px (default %(default)s)"
    )
    group.add_argument("--mpp", type=float, default=0.5, help="level-0 um/px (default %(default)s)")
    group.add_argument(
        "--tumor-regions",
        type=int,
        default=3,
        help="tumor regions in a positive slide (default %(default)s)",
    )
    group.add_argument(
        "--mimic-regions",
        type=int,
        default=3,
        help="tumor-like benign regions, in both classes (default %(default)s)",
    )
    group.add_argument(
        "--tumor-size-um",
        type=float,
        default=300.0,
        help="typical diameter of a tumor or mimic region, um (default %(default)s)",
    )
    group.add_argument(
        "--difficulty",
        type=float,
        default=0.5,
        help="0 = mimic texture far from tumor's, 1 = the same (default %(default)s)",
    )
    group.add_argument(
        "--tile-size", type=int, default=256, help="TIFF tile side, px (default %(default)s)"
    )
    group.add_argument(
        "--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (default %(default)s)"
    )
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        help="threads rendering tiles; the file does not depend on it (default %(default)s)",
    )


def slide_seed(seed: int, slide_id: str) -> int:
    """A 63-bit seed of its own for each slide of a cohort (stable across Python versions)."""
    digest = hashlib.sha256(f"hnm-synth\0{seed}\0{slide_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def run(args: argparse.Namespace) -> int:
    from hnm.demo.synth import write_annotation, write_synthetic_slide

    started = time.perf_counter()
    result = write_synthetic_slide(
        args.out,
        width=args.width,
        height=args.height,
        mpp=args.mpp,
        label=args.label,
        seed=slide_seed(args.seed, args.slide_id),
        tumor_regions=args.tumor_regions,
        mimic_regions=args.mimic_regions,
        tumor_size_um=args.tumor_size_um,
        difficulty=args.difficulty,
        tile_size=args.tile_size,
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
    )
    write_annotation(args.annotation, result)
    log.info(
        "slide %s: %dx%d px at %g um/px, label %d, %d tumor / %d mimic regions, %.1f s -> %s",
        args.slide_id,
        result.width,
        result.height,
        result.mpp,
        result.label,
        len(result.tumor_polygons),
        len(result.mimic_polygons),
        time.perf_counter() - started,
        args.out,
    )
    return 0
