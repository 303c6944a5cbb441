"""`hnm mine`: hard negatives, pseudo-positives and the curriculum from one round's MIL scores."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sheet", required=True, help="normalised slide sheet (results/sheet.tsv)")
    parser.add_argument("--scores", required=True, help="MIL patch scores of the train split")
    parser.add_argument("--metrics", required=True, help="MIL metrics.json (reads val.f1)")
    parser.add_argument("--round", type=int, required=True, help="this round's index R")
    parser.add_argument("--previous-sets", help="round R-1's sets.parquet (omit in round 0)")
    parser.add_argument("--previous-summary", help="round R-1's summary.json (omit in round 0)")
    parser.add_argument("--out", required=True, help="sets.parquet to write")
    parser.add_argument("--summary", required=True, help="summary.json to write")
    parser.add_argument("--eta", type=float, default=0.3, help="pseudo-positive score threshold")
    parser.add_argument(
        "--neg-ratio", type=float, default=0.2,
        help="fraction of negative-slide patches kept as hard negatives (1.0 = all, ItS2CLR)",
    )
    parser.add_argument("--r0", type=float, default=0.2, help="curriculum ratio up to warm-up")
    parser.add_argument("--rT", dest="r_final", type=float, default=0.8,
                        help="curriculum ratio at the last epoch")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up epochs")
    parser.add_argument("--total-epochs", type=int, default=100, help="encoder epochs in all")
    parser.add_argument("--epochs-per-round", type=int, default=5,
                        help="fine-tuning epochs between refreshes")
    parser.add_argument(
        "--confident-negatives", action=argparse.BooleanOptionalAction, default=False,
        help="add the lowest-scoring positive-slide patches as negatives of the second update",
    )
    parser.add_argument("--r-neg0", dest="r_neg", type=float, default=0.2,
                        help="confident negatives: lowest fraction of positive-slide scores")
    parser.add_argument(
        "--gate", action=argparse.BooleanOptionalAction, default=True,
        help="keep the previous sets when this round's val F1 is below the best so far",
    )


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from hnm.core.atomic import atomic_path, write_json
    from hnm.core.errors import HnmError
    from hnm.mining.sets import (
        MiningSettings, json_safe, log_summary, read_sets, read_val_f1, run_mining,
    )
    from hnm.io.sheet import read_normalised_sheet

    settings = MiningSettings(
        eta=args.eta, neg_ratio=args.neg_ratio, r0=args.r0, r_final=args.r_final,
        warmup=args.warmup, total_epochs=args.total_epochs,
        epochs_per_round=args.epochs_per_round, confident_negatives=args.confident_negatives,
        r_neg=args.r_neg, gate=args.gate,
    )
    if not Path(args.scores).exists():
        raise HnmError(f"scores file {args.scores} does not exist; run `hnm train-mil` first")
    scores = pd.read_parquet(args.scores)
    previous_sets = read_sets(args.previous_sets) if args.previous_sets else None
    previous_summary = None
    if args.previous_summary:
        try:
            previous_summary = json.loads(Path(args.previous_summary).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise HnmError(f"previous summary {args.previous_summary}: {error}") from error
    sets, summary = run_mining(
        read_normalised_sheet(args.sheet), scores, args.scores, read_val_f1(args.metrics),
        args.round, settings, previous_sets, previous_summary,
    )
    log_summary(summary)
    with atomic_path(args.out) as temporary:
        sets.to_parquet(temporary, index=False)
    write_json(args.summary, json_safe(summary))
    return 0

