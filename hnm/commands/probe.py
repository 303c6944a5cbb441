"""`python -m hnm probe`: one round's feature quality (linear probe, MIL over seeds) -> probe.json."""

from __future__ import annotations

import argparse

from hnm.evaluation.settings import EvaluationSettings
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
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the run's seed: the round's own MIL's, and the probe's patch sample's",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (the MILs)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="the job's CPU thread budget (0: the cores it may use): BLAS threads of the probe; "
        "the MILs take as many of them as their bag size makes useful",
    )
    MilSettings.add_arguments(parser)
    EvaluationSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.evaluation.feature_quality import feature_quality

    feature_quality(
        args.sheet,
        args.eval_sheet,
        args.features,
        args.tiles,
        args.eval_metrics,
        args.out,
        MilSettings.from_args(args, seed=args.seed),
        EvaluationSettings.from_args(args),
        device=args.device,
        threads=args.threads,
    )
    return 0
