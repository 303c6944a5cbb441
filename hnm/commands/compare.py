"""`hnm compare`: several methods over several seeds on one cohort, and the table of their results.

    python -m hnm compare --spec config/compare.yaml --out compare --cores 2

Runs the workflow once per method and seed (sharing tiles and round-0 features, see
hnm.compare.runner), then writes runs.csv, table.csv, paired.csv and summary.md into --out.
Run again after an interruption: finished runs are kept. `--tables-only` rebuilds the tables
from finished runs without starting Snakemake.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="comparison file (config/compare.yaml)")
    parser.add_argument("--out", required=True, help="folder of the runs and the tables")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores of each run")
    parser.add_argument(
        "--tables-only", action="store_true", help="only rebuild the tables from finished runs"
    )


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from hnm.compare.runner import RunRecord, run_comparison
    from hnm.compare.spec import load_spec
    from hnm.compare.summary import write_summary
    from hnm.compare.table import collect
    from hnm.core.atomic import atomic_path, write_text

    log = logging.getLogger("hnm.compare")
    spec = load_spec(args.spec)
    out = Path(args.out).resolve()
    timing = out / "timing.json"
    if args.tables_only:
        saved = json.loads(timing.read_text())
        records = [RunRecord(r["name"], Path(r["folder"]), r["seconds"]) for r in saved["runs"]]
        wall = saved["wall_seconds"]
    else:
        records = run_comparison(spec, out, args.cores, [])
        # Every run's time over every invocation: a comparison resumed after a stop costs its
        # parts, not only the last invocation's.
        wall = sum(record.seconds for record in records)
        write_text(
            timing,
            json.dumps(
                {
                    "wall_seconds": wall,
                    "runs": [
                        {"name": r.name, "folder": str(r.folder), "seconds": r.seconds}
                        for r in records
                    ],
                },
                indent=2,
            ),
        )
    runs, table, paired = collect(spec, out, log.info)
    for name, frame in (("runs.csv", runs), ("table.csv", table), ("paired.csv", paired)):
        with atomic_path(out / name) as temporary:
            frame.to_csv(temporary, index=False)
    summary = write_summary(spec, table, paired, records, wall)
    write_text(out / "summary.md", summary)
    print(summary)
    return 0
