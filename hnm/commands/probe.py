"""`python -m hnm probe`: one round's feature quality (linear probe, MIL over seeds) -> probe.json."""

from __future__ import annotations

import argparse

from hnm.core.cliflags import add_job_arguments
from hnm.evaluate.settings import EvaluateSettings
from hnm.mil.settings import MilSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sheet", required=True, help="training sheet the round's MIL used (results/sheet.tsv)"
    )
    parser.add_argument(
        "--eval-sheet", required=True, help="sheet with the annotations (results/sheet_eval.tsv)"
    )
    parser.add_argument(
        "--features", nargs="+", required=True, help="the round's feature files <slide_id>.h5"
    )
    parser.add_argument(
        "--tiles", nargs="+", required=True, help="tiles files <slide_id>.h5 (patch positions)"
    )
    parser.add_argument(
        "--eval-metrics",
        required=True,
        help="the round's evaluation metrics.json (its own MIL's test AUCs)",
    )
    parser.add_argument("--out", required=True, help="probe.json to write")
    add_job_arguments(parser, "seed", "device", "threads")
    MilSettings.add_arguments(parser)
    EvaluateSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.evaluate.feature_quality import feature_quality

    feature_quality(
        args.sheet,
        args.eval_sheet,
        args.features,
        args.tiles,
        args.eval_metrics,
        args.out,
        MilSettings.from_args(args, seed=args.seed),
        EvaluateSettings.from_args(args),
        device=args.device,
        threads=args.threads,
    )
    return 0
