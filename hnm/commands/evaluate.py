"""`python -m hnm evaluate`: slide metrics at the val threshold, patch metrics where annotated."""

from __future__ import annotations

import argparse

from hnm.evaluate.settings import EvaluateSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--mil-metrics", required=True, help="hnm mil metrics.json (threshold)")
    parser.add_argument("--mil-slides", required=True, help="hnm mil slides.parquet")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}-scores", default=None, help=f"hnm mil {split} patch scores")
    parser.add_argument(
        "--tiles", nargs="+", default=[], help="tiles files <slide_id>.h5 of the annotated slides"
    )
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--predictions", required=True, help="predictions CSV to write")
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="split for the slide metrics (patch metrics cover every annotated split)",
    )
    EvaluateSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.evaluate.evaluate import MilFiles, evaluate

    scores = {
        split: path
        for split in ("train", "val", "test")
        if (path := getattr(args, f"{split}_scores")) is not None
    }
    settings = EvaluateSettings.from_args(args)
    evaluate(
        args.sheet,
        MilFiles(args.mil_metrics, args.mil_slides, scores),
        args.tiles,
        args.out,
        args.predictions,
        split=args.split,
        annotation_class=settings.annotation_class,
        min_fraction=settings.min_fraction,
        versus_classes=settings.versus_classes,
    )
    return 0
