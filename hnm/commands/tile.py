"""`hnm tile`: tissue detection and the patch grid of one slide -> tiles HDF5 + QC PNG.

The stage is hnm.tile.stage.tile_to_files (what skip and fail mode do is said there); the tiling
flags, their defaults and why are declared once in hnm.tile.settings.TileSettings.
"""

from __future__ import annotations

import argparse
import logging

from hnm.tile.settings import TileSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide", required=True, help="slide file (anything openslide opens)")
    parser.add_argument("--slide-id", required=True, help="id used in messages and file attributes")
    parser.add_argument("--out", required=True, help="tiles HDF5 to write (results/tiles/ID.h5)")
    parser.add_argument("--qc", required=True, help="QC PNG to write (results/qc/ID.png)")
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="level-0 um/px to use instead of the slide's metadata (the sheet's mpp column)",
    )
    TileSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.tile.stage import tile_to_files

    # Bad settings are the user's, not the slide's: they fail even with --on-slide-error skip.
    settings = TileSettings.from_args(args)
    # libvips reports each decoding step at INFO and a corrupt tile as a WARNING before we fall
    # back to openslide, which then gives the real verdict; keep job logs to what matters.
    logging.getLogger("pyvips").setLevel(logging.ERROR)
    tile_to_files(args.slide, args.slide_id, args.out, args.qc, settings, args.mpp)
    return 0
