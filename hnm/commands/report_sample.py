"""`python -m hnm report-sample`: small copies of a sample of per-slide images for the report,
and one table of every slide's files."""

from __future__ import annotations

import argparse

from hnm.viz.settings import VizSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="*", default=[], help="full-size images to shrink")
    parser.add_argument(
        "--out",
        nargs="*",
        default=[],
        help="one small JPEG per --qc-slides slide, then one per --images file",
    )
    parser.add_argument(
        "--tiles",
        nargs="*",
        default=[],
        help="every slide's tiles files, where tiling is batched: the QC pictures of --qc-slides "
        "are read from them, and the index points at each batch's QC PNG",
    )
    parser.add_argument(
        "--qc-slides", nargs="*", default=[], help="slides whose QC picture is in their tiles"
    )
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--predictions", required=True, help="final predictions.csv")
    parser.add_argument("--out-index", required=True, help="CSV of every slide's files")
    parser.add_argument("--metrics", required=True, help="final metrics.json")
    parser.add_argument("--rounds", required=True, help="final rounds.csv")
    parser.add_argument("--out-metrics", required=True, help="HTML table of both to write")
    VizSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.core.errors import HnmError
    from hnm.viz.run import write_metrics_html, write_report_sample

    if len(args.images) + len(args.qc_slides) != len(args.out):
        raise HnmError(
            f"{len(args.qc_slides)} --qc-slides and {len(args.images)} --images but "
            f"{len(args.out)} --out files"
        )
    write_report_sample(
        args.images,
        args.out,
        args.sheet,
        args.predictions,
        args.out_index,
        VizSettings.from_args(args),
        args.tiles,
        args.qc_slides,
    )
    write_metrics_html(args.metrics, args.rounds, args.out_metrics)
    return 0
