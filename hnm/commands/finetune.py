"""`hnm finetune`: SupCon fine-tuning of encoder_r on round r's mined sets -> encoder_{r+1}."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--sets", required=True, help="round r's mining/sets.parquet")
    parser.add_argument(
        "--tiles", nargs="+", required=True, help="tiles files <slide_id>.h5 of the train slides"
    )
    parser.add_argument("--encoder-in", required=True, help="results/r{r}/encoder.pt")
    parser.add_argument("--out", required=True, help="results/r{r+1}/encoder.pt to write")
    parser.add_argument("--checkpoint-dir", default="",
                        help="resumable state (not a Snakemake output); empty = no checkpoints")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of this round")
    parser.add_argument("--total-epochs", type=int, default=100,
                        help="epochs of the whole schedule (the cosine reaches 0 there)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="global epoch from which the positive-anchor update runs")
    parser.add_argument("--batch-size", type=int, default=512, help="patches per update")
    parser.add_argument("--neg-fraction", type=float, default=0.8,
                        help="hard-negative share of the negative-anchor batch")
    parser.add_argument("--pos-fraction-positive-mode", type=float, default=0.05,
                        help="curriculum-positive share of the positive-anchor batch")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="SGD momentum (the authors' code: 0)")
    parser.add_argument("--cosine-after", type=int, default=10,
                        help="global epoch after which the learning rate follows a cosine")
    parser.add_argument("--temperature", type=float, default=0.07, help="SupCon temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="patch-reading processes")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto = bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--max-steps-per-epoch", type=int, default=0,
                        help="cap on steps per epoch (0 = no cap; for smoke tests)")


def run(args: argparse.Namespace) -> int:
    from hnm.core.device import resolve_device
    from hnm.core.errors import ConfigError
    from hnm.finetune.train import FinetuneSettings, finetune
    from hnm.io.sheet import read_normalised_sheet

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    settings = FinetuneSettings(
        epochs=args.epochs, total_epochs=args.total_epochs, warmup=args.warmup,
        batch_size=args.batch_size, neg_fraction=args.neg_fraction,
        pos_fraction_positive_mode=args.pos_fraction_positive_mode, lr=args.lr,
        weight_decay=args.weight_decay, momentum=args.momentum, cosine_after=args.cosine_after,
        temperature=args.temperature, seed=args.seed, precision=args.precision,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    finetune(
        read_normalised_sheet(args.sheet), args.sets, args.tiles, args.encoder_in, args.out,
        args.checkpoint_dir or None, settings, resolve_device(args.device), args.workers,
    )
    return 0
