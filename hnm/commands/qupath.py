"""`python -m hnm qupath`: patch scores of each slide as GeoJSON tiles QuPath imports."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", nargs="+", required=True, help="patch score parquet files")
    parser.add_argument("--tiles", nargs="+", required=True, help="tiles files <slide_id>.h5")
    parser.add_argument(
        "--out", nargs="+", required=True, help="GeoJSON files to write, named <slide_id>.geojson"
    )


def run(args: argparse.Namespace) -> int:
    from hnm.viz.run import write_qupath

    write_qupath(args.scores, args.tiles, args.out)
    return 0
