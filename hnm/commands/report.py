"""`hnm report`: results/final/ (last round's test metrics and predictions) and rounds.csv."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="the workflow's results folder")
    parser.add_argument("--rounds", type=int, required=True, help="the last round R")
    parser.add_argument("--out-dir", default="results/final")


def run(args: argparse.Namespace) -> int:
    from hnm.evaluation.report import write_report

    write_report(args.results, args.rounds, args.out_dir)
    return 0
