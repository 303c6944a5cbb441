"""`hnm finetune`: SupCon fine-tuning of encoder_r on round r's mined sets -> encoder_{r+1}."""

from __future__ import annotations

import argparse

from hnm.core.cliflags import add_job_arguments
from hnm.finetune.settings import EncoderSchedule, FinetuneSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--sets", required=True, help="round r's mining/sets.parquet")
    parser.add_argument(
        "--tiles", nargs="+", required=True, help="tiles files <slide_id>.h5 of the train slides"
    )
    parser.add_argument("--encoder-in", required=True, help="results/r{r}/encoder.pt")
    parser.add_argument("--out", required=True, help="results/r{r+1}/encoder.pt to write")
    EncoderSchedule.add_rounds_argument(parser)
    add_job_arguments(parser, "checkpoint_dir", "seed", "device", "threads")
    FinetuneSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from hnm.core.device import resolve_device
    from hnm.core.threads import usable_cores
    from hnm.finetune.train import finetune
    from hnm.io.sheet import read_normalised_sheet

    torch.set_num_threads(args.threads or usable_cores())
    settings = FinetuneSettings.from_args(args, rounds=args.rounds, seed=args.seed)
    finetune(
        read_normalised_sheet(args.sheet),
        args.sets,
        args.tiles,
        args.encoder_in,
        args.out,
        args.checkpoint_dir or None,
        settings,
        resolve_device(args.device),
        settings.workers,
    )
    return 0
