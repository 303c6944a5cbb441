"""`python -m hnm train-mil`: train one MIL aggregator on one round's features."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument(
        "--features-dir", required=True, help="folder of <slide_id>.h5 feature files"
    )
    parser.add_argument(
        "--out-dir", required=True, help="outputs: model.pt, metrics.json, scores/ ..."
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="resumable state, outside the declared outputs (omit: no resume)",
    )
    parser.add_argument("--aggregator", default="dsmil", choices=["dsmil", "abmil"])
    parser.add_argument("--epochs", type=int, default=350)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--step-size", type=int, default=75, help="StepLR period in epochs")
    parser.add_argument("--gamma", type=float, default=0.5, help="StepLR factor")
    parser.add_argument(
        "--ranking-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pair mode with the patch ranking loss (HNM); --no-ranking-loss: one bag per step",
    )
    parser.add_argument("--w-bag", type=float, default=0.5)
    parser.add_argument("--w-instance", type=float, default=0.5)
    parser.add_argument("--w-rank", type=float, default=0.1)
    parser.add_argument(
        "--top-k", type=int, default=10, help="K of the ranking loss (capped at bag size)"
    )
    parser.add_argument("--margin", type=float, default=1.0, help="margin of the ranking loss")
    parser.add_argument(
        "--class-balance",
        default="none",
        choices=["none", "balanced"],
        help="bag mode only: weight bags by inverse class frequency (pairs are balanced already)",
    )
    parser.add_argument("--select", default="best_val", choices=["best_val", "fixed_epoch"])
    parser.add_argument("--select-metric", default="auc", choices=["auc", "f1", "loss"])
    parser.add_argument(
        "--fixed-epoch", type=int, default=199, help="counted from 0; negative from the end"
    )
    parser.add_argument(
        "--threshold-method",
        default="f1",
        choices=["f1", "youden"],
        help="how the decision threshold is chosen on validation",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=10, help="epochs between checkpoints"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); set it to the job's cores when shared",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from hnm.mil.settings import MilSettings
    from hnm.mil.train import train_mil

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    settings = MilSettings(
        aggregator=args.aggregator,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        step_size=args.step_size,
        gamma=args.gamma,
        ranking_loss=args.ranking_loss,
        w_bag=args.w_bag,
        w_instance=args.w_instance,
        w_rank=args.w_rank,
        top_k=args.top_k,
        margin=args.margin,
        class_balance=args.class_balance,
        select=args.select,
        select_metric=args.select_metric,
        fixed_epoch=args.fixed_epoch,
        threshold_method=args.threshold_method,
        seed=args.seed,
    )
    train_mil(
        args.sheet,
        args.features_dir,
        args.out_dir,
        args.checkpoint_dir,
        settings,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
    )
    return 0
