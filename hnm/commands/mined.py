"""`python -m hnm mined`: what one round mined, on a few train slides and as patch galleries."""

from __future__ import annotations

import argparse

from hnm.evaluate.settings import EvaluateSettings
from hnm.viz.settings import VizSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument("--sets", required=True, help="the round's mining/sets.parquet")
    parser.add_argument("--tiles", nargs="+", required=True, help="tiles files of the train slides")
    parser.add_argument("--out-overlay", required=True, help="PNG (an SVG is written beside it)")
    parser.add_argument("--out-gallery", required=True, help="PNG (an SVG is written beside it)")
    EvaluateSettings.add_arguments(parser)
    VizSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.viz.run import write_mined

    write_mined(
        args.sheet,
        args.round,
        args.sets,
        args.tiles,
        args.out_overlay,
        args.out_gallery,
        EvaluateSettings.from_args(args),
        VizSettings.from_args(args),
    )
    return 0
