"""`hnm mine`: hard negatives, pseudo-positives and the curriculum from one round's MIL scores."""

from __future__ import annotations

import argparse
import logging

from hnm.finetune.settings import EncoderSchedule
from hnm.mine.settings import MineSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--scores", required=True, help="MIL patch scores of the train split")
    parser.add_argument(
        "--metrics", required=True, help="MIL metrics.json (reads the val F1 the gate compares)"
    )
    parser.add_argument("--round", type=int, required=True, help="this round's index R")
    parser.add_argument("--previous-sets", help="round R-1's sets.parquet (omit in round 0)")
    parser.add_argument("--previous-summary", help="round R-1's summary.json (omit in round 0)")
    parser.add_argument("--out", required=True, help="sets.parquet to write")
    parser.add_argument("--summary", required=True, help="summary.json to write")
    EncoderSchedule.add_rounds_argument(parser)
    MineSettings.add_arguments(parser)
    EncoderSchedule.add_arguments(parser, title="encoder schedule (finetune settings)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from hnm.core.atomic import atomic_path, write_json
    from hnm.core.errors import HnmError
    from hnm.io.sheet import read_normalised_sheet
    from hnm.mine.sets import json_safe, log_summary, read_sets, read_val_f1, run_mining

    schedule = EncoderSchedule.from_args(args, rounds=args.rounds)
    settings = MineSettings.from_args(args, schedule=schedule)
    if not Path(args.scores).exists():
        raise HnmError(f"scores file {args.scores} does not exist; run `hnm mil` first")
    scores = pd.read_parquet(args.scores)
    previous_sets = read_sets(args.previous_sets) if args.previous_sets else None
    previous_summary = None
    if args.previous_summary:
        try:
            previous_summary = json.loads(Path(args.previous_summary).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise HnmError(f"previous summary {args.previous_summary}: {error}") from error
    sets, summary = run_mining(
        read_normalised_sheet(args.sheet),
        scores,
        args.scores,
        read_val_f1(args.metrics, settings.gate_metric),
        args.round,
        settings,
        previous_sets,
        previous_summary,
    )
    log_summary(summary)
    with atomic_path(args.out) as temporary:
        sets.to_parquet(temporary, index=False)
    write_json(args.summary, json_safe(summary))
    return 0
