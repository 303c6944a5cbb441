"""`hnm report`: results/final/ (last round's test metrics and predictions) and rounds.csv.

Every round's files are passed in round order (0..R); mining summaries and next-round encoders
exist for rounds 0..R-1 only; feature-quality files (probe.json) for every round or none (a run
without annotations has none).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mil-metrics", nargs="+", required=True, help="per round, 0..R")
    parser.add_argument("--eval-metrics", nargs="+", required=True, help="per round, 0..R")
    parser.add_argument("--mining-summaries", nargs="*", default=[], help="per round, 0..R-1")
    parser.add_argument("--encoders", nargs="*", default=[], help="fine-tuned encoders, 1..R")
    parser.add_argument(
        "--probe-metrics", nargs="*", default=[], help="per round, 0..R: eval/probe.json, or none"
    )
    parser.add_argument("--predictions", required=True, help="round R's predictions.csv")
    parser.add_argument(
        "--failures", default=None, help="results/qc/failed_slides.tsv: skipped slides, as warnings"
    )
    parser.add_argument("--out-metrics", required=True)
    parser.add_argument("--out-predictions", required=True)
    parser.add_argument("--out-rounds", required=True)
    parser.add_argument("--out-timing", default=None, help="CSV of each round's costs to write")
    parser.add_argument(
        "--out-finetune", default=None, help="CSV of the fine-tuning losses per epoch to write"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hnm.core.errors import HnmError
    from hnm.evaluate.report import RoundFiles, write_report

    rounds = len(args.mil_metrics)
    later = rounds - 1
    if (
        len(args.eval_metrics) != rounds
        or len(args.mining_summaries) != later
        or len(args.encoders) != later
        or len(args.probe_metrics) not in (0, rounds)
    ):
        raise HnmError(
            f"report needs one MIL and one evaluation metrics file per round and one mining "
            f"summary and fine-tuned encoder per round but the last, and one probe file per "
            f"round or none; got {rounds} MIL, {len(args.eval_metrics)} evaluation, "
            f"{len(args.mining_summaries)} mining, {len(args.encoders)} encoder and "
            f"{len(args.probe_metrics)} probe file(s)"
        )
    files = [
        RoundFiles(
            Path(args.mil_metrics[r]),
            Path(args.eval_metrics[r]),
            Path(args.mining_summaries[r]) if r < later else None,
            Path(args.encoders[r]) if r < later else None,
            Path(args.probe_metrics[r]) if args.probe_metrics else None,
        )
        for r in range(rounds)
    ]
    write_report(
        files,
        args.predictions,
        args.out_metrics,
        args.out_predictions,
        args.out_rounds,
        out_finetune=args.out_finetune,
        failures=args.failures,
        out_timing=args.out_timing,
    )
    return 0
