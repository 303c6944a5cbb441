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
        help="CPU threads for torch (0: torch's default); set it to the job's cores when shared",
    )
    MilSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from hnm.mil.train import train_mil

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    train_mil(
        args.sheet,
        args.features,
        args.out_dir,
        args.checkpoint_dir,
        MilSettings.from_args(args, seed=args.seed),
        device=args.device,
    )
    return 0
