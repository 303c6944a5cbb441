"""`python -m hnm train-mil`: train one MIL aggregator on one round's features."""

from __future__ import annotations

import argparse

from hnm.mil.settings import MilSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument(
        "--features", nargs="+", required=True, help="the round's feature files <slide_id>.h5"
    )
    parser.add_argument(
        "--out-dir", required=True, help="outputs: model.pt, metrics.json, scores/ ..."
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="resumable state, outside the declared outputs (omit: no resume)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="the job's CPU thread budget (0: the cores it may use); torch gets as many as the "
        "bag size makes useful, often 1 (oversubscribed cores stall small ops)",
    )
    MilSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.mil.train import train_mil

    train_mil(
        args.sheet,
        args.features,
        args.out_dir,
        args.checkpoint_dir,
        MilSettings.from_args(args, seed=args.seed),
        device=args.device,
        threads=args.threads,
    )
    return 0
