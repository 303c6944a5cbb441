"""`python -m hnm mil`: train one MIL aggregator on one round's features."""

from __future__ import annotations

import argparse

from hnm.core.cliflags import add_job_arguments
from hnm.mil.settings import MilSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument(
        "--features", nargs="+", required=True, help="the round's feature files <slide_id>.h5"
    )
    parser.add_argument(
        "--out-dir", required=True, help="outputs: model.pt, metrics.json, scores/ ..."
    )
    add_job_arguments(parser, "checkpoint_dir", "seed", "device", "threads")
    MilSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.mil.train import train_mil

    train_mil(
        args.sheet,
        args.features,
        args.out_dir,
        args.checkpoint_dir or None,
        MilSettings.from_args(args, seed=args.seed),
        device=args.device,
        threads=args.threads,
    )
    return 0
