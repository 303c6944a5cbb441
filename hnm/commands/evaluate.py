"""`python -m hnm evaluate`: slide metrics at the val threshold, patch metrics where annotated."""

from __future__ import annotations

import argparse

from hnm.evaluation.settings import EvaluationSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--mil-dir", required=True, help="train-mil output folder")
    parser.add_argument("--tiles-dir", required=True, help="folder of <slide_id>.h5 tile files")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--predictions", required=True, help="predictions CSV to write")
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="split for the slide metrics (patch metrics cover every annotated split)",
    )
    EvaluationSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.evaluation.evaluate import evaluate

    settings = EvaluationSettings.from_args(args)
    evaluate(
        args.sheet,
        args.mil_dir,
        args.tiles_dir,
        args.out,
        args.predictions,
        split=args.split,
        annotation_class=settings.annotation_class,
        min_fraction=settings.min_fraction,
        versus_classes=settings.versus_classes,
    )
    return 0
