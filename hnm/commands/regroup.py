"""`hnm regroup`: move a run begun before batch files into them, so Snakemake carries on.

    python -m hnm regroup --results results --tile-slides-per-job 8 --extract-slides-per-job 8

Give the config's `tile.slides_per_job` and `extract.slides_per_job` (what the run will go on
with). Each batch's tiles and features file is written from its slides' files (same datasets,
same attributes, their newest modification time), and those files are removed; a batch with a
slide missing is left for Snakemake to make. `--dry-run` says what it would do. Run it while no
Snakemake runs in that folder; afterwards `snakemake -n` should find only the jobs of batches that
were incomplete (hnm.io.regroup).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="the run's results folder")
    parser.add_argument(
        "--tile-slides-per-job", type=int, required=True, help="the config's tile.slides_per_job"
    )
    parser.add_argument(
        "--extract-slides-per-job",
        type=int,
        required=True,
        help="the config's extract.slides_per_job",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from hnm.io.regroup import regroup_run

    log = logging.getLogger("hnm.regroup")
    done = regroup_run(
        Path(args.results), args.tile_slides_per_job, args.extract_slides_per_job, args.dry_run
    )
    verb = "would write" if args.dry_run else "wrote"
    removed = (
        ""
        if args.dry_run
        else f", removed {len(done.removed)} per-slide file(s) and {done.forgotten} Snakemake "
        "record(s) of files made from them"
    )
    left = ", ".join(map(str, done.incomplete[:5])) + (" ..." if len(done.incomplete) > 5 else "")
    log.info(
        "%s %d batch file(s)%s; %d batch(es) have a slide missing and are left to Snakemake%s",
        verb,
        len(done.written),
        removed,
        len(done.incomplete),
        f": {left}" if left else "",
    )
    if done.written and not args.dry_run:
        log.info(
            "next: your usual snakemake command rewrites the lists of files (results/lists); "
            "where the run had jobs left, run it once more: Snakemake starts no job after a "
            "list it rewrites"
        )
    return 0
