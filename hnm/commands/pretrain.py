"""`hnm pretrain`: SimCLR on the train slides' patches, initial encoder -> round 0's encoder."""

from __future__ import annotations

import argparse

from hnm.core.cliflags import add_job_arguments
from hnm.pretrain.settings import PretrainSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument(
        "--tiles", nargs="+", required=True, help="tiles files <slide_id>.h5 of the train slides"
    )
    parser.add_argument(
        "--encoder-in", required=True, help="init_encoder's file (random weights from the seed)"
    )
    parser.add_argument("--out", required=True, help="round 0's encoder (results/r0/encoder.pt)")
    add_job_arguments(parser, "checkpoint_dir", "seed", "device", "threads")
    PretrainSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.core.device import resolve_device
    from hnm.io.sheet import read_normalised_sheet
    from hnm.pretrain.train import pretrain

    pretrain(
        read_normalised_sheet(args.sheet),
        args.tiles,
        args.encoder_in,
        args.out,
        args.checkpoint_dir or None,
        PretrainSettings.from_args(args, seed=args.seed),
        resolve_device(args.device),
        args.threads,
    )
    return 0
