"""`python -m hnm figures`: ROC curves, per-round metrics, confusion matrix, training curves."""

from __future__ import annotations

import argparse

from hnm.evaluate.settings import EvaluateSettings
from hnm.viz.settings import VizSettings

FIGURES = ("roc", "rounds", "confusion", "finetune", "mil")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--predictions", required=True, help="final predictions.csv")
    parser.add_argument("--mil-metrics", nargs="+", required=True, help="per round, 0..R")
    parser.add_argument("--eval-metrics", nargs="+", required=True, help="per round, 0..R")
    parser.add_argument("--mil-epochs", nargs="+", required=True, help="epochs.csv per round")
    parser.add_argument("--finetune-epochs", required=True, help="final/finetune_epochs.csv")
    parser.add_argument("--test-scores", required=True, help="the last round's test patch scores")
    parser.add_argument("--tiles", nargs="*", default=[], help="tiles files of the test slides")
    for name in FIGURES:
        parser.add_argument(f"--out-{name}", required=True, help="PNG (an SVG beside it)")
    EvaluateSettings.add_arguments(parser)
    VizSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.viz.run import write_figures

    write_figures(
        args,
        {name: getattr(args, f"out_{name}") for name in FIGURES},
        EvaluateSettings.from_args(args),
        VizSettings.from_args(args),
    )
    return 0
