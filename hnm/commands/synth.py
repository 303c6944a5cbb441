"""`hnm synth`: write one synthetic demo slide (pyramidal JPEG BigTIFF) and its GeoJSON ground truth.

The slide's random stream comes from (--cohort-seed, --slide-id), so every slide of a demo cohort
differs, and the same cohort seed rebuilds the same files byte for byte. The flags and their defaults are the
`demo` settings (hnm.demo.settings.DemoSettings): a 2048 px square at 0.5 um/px, which the demo's
tiling reads at 2.0 um/px (level 2) in 32 px patches.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time

from hnm.demo.settings import DemoSettings

log = logging.getLogger("hnm.demo.synth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slide-id",
        required=True,
        help="slide id; with --cohort-seed it picks the slide's random stream",
    )
    parser.add_argument(
        "--label",
        type=int,
        choices=(0, 1),
        required=True,
        help="1 = tumor (has tumor regions), 0 = normal",
    )
    parser.add_argument("--out", required=True, help="slide to write (.tiff)")
    parser.add_argument("--annotation", required=True, help="ground truth GeoJSON to write")
    DemoSettings.add_arguments(parser, title="slide (demo settings)")


def slide_seed(seed: int, slide_id: str) -> int:
    """A 63-bit seed of its own for each slide of a cohort (stable across Python versions)."""
    digest = hashlib.sha256(f"hnm-synth\0{seed}\0{slide_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def run(args: argparse.Namespace) -> int:
    from hnm.demo.synth import write_annotation, write_synthetic_slide

    settings = DemoSettings.from_args(args)
    started = time.perf_counter()
    result = write_synthetic_slide(
        args.out,
        width=settings.width,
        height=settings.height,
        mpp=settings.mpp,
        label=args.label,
        seed=slide_seed(settings.cohort_seed, args.slide_id),
        tumor_regions=settings.tumor_regions,
        mimic_regions=settings.mimic_regions,
        tumor_size_um=settings.tumor_size_um,
        difficulty=settings.difficulty,
        tile_size=settings.tile_size,
        jpeg_quality=settings.jpeg_quality,
        workers=settings.workers,
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
