"""`hnm tile`: tissue detection and the patch grid of each slide -> tiles HDF5 + QC PNG.

Several slides per call (`--slide A B --slide-id a b ...`, tile.slides_per_job in the workflow)
pay the interpreter and imports once. With `--batch` they go into one tiles file (a group per
slide) and one QC PNG (their pictures stacked): the workflow's layout for a batch of slides.

The stage is hnm.tile.stage.tile_to_files (what skip and fail mode do is said there); the tiling
flags, their defaults and why are declared once in hnm.tile.settings.TileSettings.
"""

from __future__ import annotations

import argparse
import logging

from hnm.core.errors import HnmError
from hnm.tile.settings import TileSettings

# What --mpp says for a slide whose level-0 resolution comes from its own metadata.
FROM_METADATA = "metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slide", nargs="+", required=True, help="slide file(s) (anything openslide opens)"
    )
    parser.add_argument(
        "--slide-id", nargs="+", required=True, help="one id per slide (messages, attributes)"
    )
    parser.add_argument(
        "--out",
        nargs="+",
        required=True,
        help="tiles HDF5 per slide (results/tiles/ID.h5), or with --batch one for all",
    )
    parser.add_argument(
        "--qc",
        nargs="+",
        required=True,
        help="QC PNG per slide (results/qc/ID.png), or with --batch one for all",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="write one tiles file holding every slide (a group each) and one QC PNG",
    )
    parser.add_argument(
        "--mpp",
        nargs="+",
        default=None,
        help="level-0 um/px per slide instead of its metadata (the sheet's mpp column); "
        f"'{FROM_METADATA}' for a slide whose metadata is to be used",
    )
    TileSettings.add_arguments(parser)


def slide_mpps(values: list[str] | None, slides: int) -> list[float | None]:
    """--mpp as one value per slide (None: the slide's metadata), or an error saying what to pass."""
    if values is None:
        return [None] * slides
    if len(values) != slides:
        raise HnmError(f"--mpp gives {len(values)} value(s) for {slides} slide(s); give one each")
    mpps: list[float | None] = []
    for value in values:
        if value == FROM_METADATA:
            mpps.append(None)
            continue
        try:
            mpps.append(float(value))
        except ValueError:
            raise HnmError(f"--mpp {value!r} is neither a number nor '{FROM_METADATA}'") from None
    return mpps


def run(args: argparse.Namespace) -> int:
    from hnm.tile.stage import tile_batch, tile_to_files

    # Bad settings are the user's, not the slide's: they fail even with --on-slide-error skip.
    settings = TileSettings.from_args(args)
    if len(args.slide_id) != len(args.slide):
        raise HnmError(
            f"{len(args.slide)} --slide and {len(args.slide_id)} --slide-id: give one id per slide"
        )
    per_slide = 1 if args.batch else len(args.slide)
    if {len(args.out), len(args.qc)} != {per_slide}:
        raise HnmError(
            f"{len(args.slide)} --slide, {len(args.out)} --out and {len(args.qc)} --qc: give "
            + ("one --out and one --qc with --batch" if args.batch else "one of each per slide")
        )
    mpps = slide_mpps(args.mpp, len(args.slide))
    # libvips reports each decoding step at INFO and a corrupt tile as a WARNING before we fall
    # back to openslide, which then gives the real verdict; keep job logs to what matters.
    logging.getLogger("pyvips").setLevel(logging.ERROR)
    if args.batch:
        tile_batch(args.slide, args.slide_id, args.out[0], args.qc[0], settings, mpps)
        return 0
    for slide, slide_id, out, qc, mpp in zip(args.slide, args.slide_id, args.out, args.qc, mpps):
        tile_to_files(slide, slide_id, out, qc, settings, mpp)
    return 0
