"""How long Snakemake takes to plan a run, by cohort size: CPU seconds, peak memory, job count.

Every `snakemake` call (a run, a resume, `-n`, `--list-changes`) builds the whole DAG before its
first job, so planning time is paid again and again on a large cohort. This writes a sheet of N
slides (copies of one tiny real slide, tests/data/slides/small.svs: one file per row, as a real
cohort has), then times `snakemake -n` on it for each config, in a child process whose CPU time
(user + system) and peak resident memory come from the operating system (getrusage).

    python bench/bench_plan.py                         # N = 1000, 3000 with both configs
    python bench/bench_plan.py --slides 1000 3000 10000 --configs paper
    python bench/bench_plan.py --profile 1000 --configs paper   # where the time goes (cProfile)

Configs: `demo` is config/config.yaml (the demo's rounds and extraction jobs) on the sheet;
`paper` adds config/paper.yaml (20 rounds).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO / "tests" / "data" / "slides" / "small.svs"
CONFIGS = {"demo": [], "paper": [REPO / "config" / "paper.yaml"]}
SPLITS = (("train", 0.54), ("val", 0.14), ("test", 0.32))  # Camelyon16's shares: 216 / 54 / 129


def write_cohort(folder: Path, slides: int, source: Path = SLIDE) -> Path:
    """A sheet of `slides` rows, each its own file (a copy of `source`, by default the 2.6 kB
    slide: the sheet check refuses two rows on one file), 40% tumor."""
    data = folder / "slides"
    data.mkdir(parents=True, exist_ok=True)
    rows = ["slide_id\tpath\tlabel\tsplit\tmpp"]
    start = 0
    for split, share in SPLITS:
        count = round(slides * share) if split != "test" else slides - start
        for index in range(start, start + count):
            path = data / f"slide_{index:05d}{source.suffix}"
            if not path.exists():
                shutil.copyfile(source, path)
            label = "tumor" if index % 5 < 2 else "normal"
            rows.append(f"slide_{index:05d}\t{path}\t{label}\t{split}\t0.5")
        start += count
    sheet = folder / "sheet.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def plan_command(folder: Path, sheet: Path, config: str, profile: Path | None) -> list[str]:
    overlay = folder / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"sheet": str(sheet)}))
    runner = [sys.executable]
    if profile is not None:
        runner += ["-m", "cProfile", "-o", str(profile)]
    return [
        *runner,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(folder / f"run_{config}"),
        "--configfile",
        *[str(path) for path in CONFIGS[config]],
        str(overlay),
        "-n",
        "--cores",
        "2",
    ]


def measure(command: list[str], cwd: Path = REPO) -> dict[str, float]:
    """CPU seconds and peak memory of one `snakemake -n` child, and the jobs its dry run lists.

    The figures are that child's own (wait4's rusage), so each row's peak memory is its own run's
    whatever ran before it."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd, text=True
        )
        _, status, usage = os.wait4(child.pid, 0)
        # wait4 reaped the child: tell Popen, so it does not try to reap it again.
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{text[-6000:]}")
    total = re.search(r"^total\s+(\d+)$", text, re.M)
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "peak_gb": usage.ru_maxrss / 1024**2,  # kB on Linux
        "jobs": int(total.group(1)) if total else 0,
    }


COLUMNS = [
    ("slides", ">7"), ("config", ">6"), ("jobs", ">7"), ("CPU s", ">7.1f"), ("wall s", ">7.1f"),
    ("peak GB", ">8.2f"), ("ms/job", ">7.1f"),
]  # fmt: skip


def row_text(columns: list[tuple[str, str]], values: list[object]) -> str:
    """One line of a printed table: each value in its column's format (a header: the names, as
    text, in the column's width)."""
    cells = []
    for (_, spec), value in zip(columns, values, strict=True):
        cells.append(format(value, spec if not isinstance(value, str) else spec.split(".")[0]))
    return " ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["demo", "paper"])
    parser.add_argument("--profile", type=int, default=0, help="profile one dry run of N slides")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the cohorts in")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_plan_") as scratch:
        root = args.keep or Path(scratch)
        if args.profile:
            folder = root / f"n{args.profile}"
            sheet = write_cohort(folder, args.profile)
            for config in args.configs:
                stats = folder / f"{config}.prof"
                measure(plan_command(folder, sheet, config, stats))
                print(f"== {config}, {args.profile} slides: the 25 costliest calls (cumulative)")
                pstats.Stats(str(stats)).sort_stats("cumulative").print_stats(25)
            return
        print(f"machine: {os.cpu_count()} CPUs; snakemake -n, CPU = user + system of the process")
        print(row_text(COLUMNS, [name for name, _ in COLUMNS]))
        for slides in sorted(args.slides):
            folder = root / f"n{slides}"
            sheet = write_cohort(folder, slides)
            for config in args.configs:
                row = measure(plan_command(folder, sheet, config, None))
                per_job = 1000 * row["cpu_s"] / max(row["jobs"], 1)
                values = [slides, config, row["jobs"], row["cpu_s"], row["wall_s"], row["peak_gb"]]
                print(row_text(COLUMNS, [*values, per_job]), flush=True)


if __name__ == "__main__":
    main()
