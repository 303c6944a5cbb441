"""`hnm predict`: score new slides' features with a finished run's MIL model (rules/predict.smk)."""

from __future__ import annotations

import argparse

from hnm.core.cliflags import add_job_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sheet",
        required=True,
        help="normalised sheet of the new slides (check-sheet --new-slides)",
    )
    parser.add_argument(
        "--features", nargs="+", required=True, help="features files <slide_id>.h5 of the slides"
    )
    parser.add_argument(
        "--model", required=True, help="the final MIL model (results/r{R}/mil/model.pt)"
    )
    parser.add_argument(
        "--mil-metrics",
        required=True,
        help="its metrics.json, whose val-chosen threshold makes the decisions",
    )
    parser.add_argument("--out-predictions", required=True, help="predictions CSV to write")
    parser.add_argument("--out-scores", required=True, help="patch scores parquet to write")
    parser.add_argument("--out-summary", required=True, help="JSON summary to write")
    add_job_arguments(parser, "device", "threads")


def run(args: argparse.Namespace) -> int:
    from hnm.predict.stage import predict_slides

    predict_slides(
        args.sheet,
        args.features,
        args.model,
        args.mil_metrics,
        args.out_predictions,
        args.out_scores,
        args.out_summary,
        device=args.device,
        threads=args.threads,
    )
    return 0
