"""`python -m hnm evaluate`: slide metrics at the val threshold, patch metrics where annotated."""

from __future__ import annotations

import argparse
import json


def _class_list(text: str) -> list[str]:
    """A JSON list of class names (what the workflow passes), or names separated by commas."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [name.strip() for name in text.split(",") if name.strip()]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise argparse.ArgumentTypeError(f"expected a list of class names, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--mil-metrics", required=True, help="train-mil metrics.json (threshold)")
    parser.add_argument("--mil-slides", required=True, help="train-mil slides.parquet")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}-scores", default=None, help=f"train-mil {split} patch scores")
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
    parser.add_argument(
        "--annotation-class", default="Tumor", help="GeoJSON class name of the tumour regions"
    )
    parser.add_argument(
        "--min-fraction",
        type=float,
        default=0.5,
        help="a patch is tumour when at least this fraction of it is annotated",
    )
    parser.add_argument(
        "--versus-classes",
        type=_class_list,
        default=[],
        help="other annotated classes (JSON list or comma-separated, e.g. Mimic): the patch AUC of "
        "tumor against each alone",
    )


def run(args: argparse.Namespace) -> int:
    from hnm.evaluation.evaluate import MilFiles, evaluate

    scores = {
        split: path
        for split in ("train", "val", "test")
        if (path := getattr(args, f"{split}_scores")) is not None
    }
    evaluate(
        args.sheet,
        MilFiles(args.mil_metrics, args.mil_slides, scores),
        args.tiles,
        args.out,
        args.predictions,
        split=args.split,
        annotation_class=args.annotation_class,
        min_fraction=args.min_fraction,
        versus_classes=args.versus_classes,
    )
    return 0
