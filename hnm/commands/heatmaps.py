"""`python -m hnm heatmaps`: per slide, the final model's patch scores over the slide thumbnail."""

from __future__ import annotations

import argparse

from hnm.evaluate.settings import EvaluateSettings
from hnm.viz.settings import VizSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--predictions", required=True, help="final predictions.csv")
    parser.add_argument("--scores", nargs="+", required=True, help="patch score parquet files")
    parser.add_argument("--tiles", nargs="+", required=True, help="tiles files <slide_id>.h5")
    parser.add_argument(
        "--out", nargs="+", required=True, help="PNG files to write, named <slide_id>.png"
    )
    EvaluateSettings.add_arguments(parser)
    VizSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.viz.run import write_heatmaps

    write_heatmaps(
        args.sheet,
        args.predictions,
        args.scores,
        args.tiles,
        args.out,
        EvaluateSettings.from_args(args),
        VizSettings.from_args(args),
    )
    return 0
