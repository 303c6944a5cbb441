"""What a job's start-up costs a large cohort: tiling and round-0 extraction of N tiny slides run by
the workflow (one process per tiling job, one per extraction batch), against the same work done in
one process.

Every job starts an interpreter, imports its stage (torch, openslide, pyvips) and, for extraction,
loads the encoder, before its first patch. On the large slides of a real cohort that is noise; on a
cohort of many small slides it can be most of the time. This draws one small demo slide (`hnm
synth`, 1,024 px square: about a hundred patches at the demo's tiling), writes a sheet of N copies
of it (one file per row, as a real cohort has), runs `snakemake features_round0 --cores 2` on
it (round 0 from random weights, no pretraining), and reads each job's wall time from
results/benchmarks/. Then it tiles the same slides in one process (hnm.tile.stage.tile_to_files in a
loop, after one warm-up import) and extracts them with one `hnm extract` process, and prints, per
stage, the jobs' summed wall time, the one-process time, and the start-up per job that their
difference gives.

    python bench/bench_startup.py                    # 1,000 slides, the demo config
    python bench/bench_startup.py --slides 100 --config paper
    python bench/bench_startup.py --slides 300 --tile-slides-per-job 1 16   # batched tiling
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_plan import CONFIGS  # noqa: E402
from bench_plan import write_cohort as plan_cohort  # noqa: E402


def write_cohort(folder: Path, slides: int) -> Path:
    """A sheet of `slides` copies of one synthetic tumor slide (bench_plan.py's sheet)."""
    source = folder / "source" / "source.tiff"
    source.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "hnm", "synth", "--slide-id", "source", "--label", "1",
         "--out", str(source), "--annotation", str(source.with_suffix(".geojson")),
         "--width", "1024", "--height", "1024", "--tumor-regions", "1", "--mimic-regions", "1"],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return plan_cohort(folder, slides, source)


def run_workflow(folder: Path, sheet: Path, config: str, cores: int, tile_batch: int) -> float:
    """The workflow's wall time for tiling (`tile_batch` slides a job) and round-0 extraction of
    the sheet, in folder/run_tile{tile_batch}."""
    overlay = folder / f"overlay_tile{tile_batch}.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "sheet": str(sheet),
                "rounds": 0,
                "pretrain": {"epochs": 0},
                "device": "cpu",
                "tile": {"slides_per_job": tile_batch},
            }
        )
    )
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(folder / f"run_tile{tile_batch}"), "--configfile",
        *[str(path) for path in CONFIGS[config]], str(overlay),
        "--cores", str(cores), "features_round0",
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the workflow failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def job_seconds(folder: Path) -> float:
    """Summed wall time (column `s`) of the benchmark files under `folder`."""
    total = 0.0
    for path in folder.rglob("*.tsv"):
        with open(path) as handle:
            total += float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    return total


def workflow_section(config: str, name: str) -> dict:
    """A config section as the workflow gets it: config.yaml, then the config's overlays."""
    section: dict = {}
    for path in [REPO / "config" / "config.yaml", *CONFIGS[config]]:
        section.update(yaml.safe_load(Path(path).read_text()).get(name) or {})
    return section


def tile_in_one_process(sheet: Path, out: Path, config: str) -> float:
    """Tiling every slide of the sheet in this process, with the workflow's tiling settings."""
    from hnm.tile.settings import TileSettings
    from hnm.tile.stage import tile_to_files

    settings = TileSettings.from_config(workflow_section(config, "tile"))
    rows = list(csv.DictReader(open(sheet), delimiter="\t"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for row in rows:
        slide = row["slide_id"]
        tile_to_files(
            row["path"],
            slide,
            out / f"{slide}.h5",
            out / f"{slide}.png",
            settings,
            float(row["mpp"]),
        )
    return time.perf_counter() - started


def extract_in_one_process(run: Path, sheet: Path, out: Path, config: str) -> float:
    """One `hnm extract` of every slide, with round 0's encoder and the workflow's settings."""
    from hnm.core.cliflags import to_flags

    settings = to_flags(
        workflow_section(config, "extract"), skip=["slides_per_job", "keep_rounds"]
    ).split()
    threads = workflow_section(config, "resources")["extract"].get("threads", 1)  # the job's
    rows = list(csv.DictReader(open(sheet), delimiter="\t"))
    out.mkdir(parents=True, exist_ok=True)
    listed = out / "args.txt"
    lines = ["--slide", *[r["path"] for r in rows], "--slide-id", *[r["slide_id"] for r in rows]]
    lines += ["--tiles", *[str(run / "results" / "tiles" / f"{r['slide_id']}.h5") for r in rows]]
    lines += ["--out", *[str(out / f"{r['slide_id']}.h5") for r in rows]]
    listed.write_text("\n".join(lines) + "\n")
    command = [
        sys.executable, "-m", "hnm", "extract", f"@{listed}",
        "--encoder", str(run / "results" / "r0" / "encoder.pt"), "--round", "0",
        "--device", "cpu", "--threads", str(threads), *settings,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the runs in")
    parser.add_argument(
        "--tile-slides-per-job",
        type=int,
        nargs="+",
        default=[1],
        help="one workflow run per value of tile.slides_per_job (1: a job per slide)",
    )
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as scratch:
        folder = args.keep or Path(scratch)
        sheet = write_cohort(folder, args.slides)
        for batch in args.tile_slides_per_job:
            wall = run_workflow(folder, sheet, args.config, args.cores, batch)
            benchmarks = folder / f"run_tile{batch}" / "results" / "benchmarks"
            runs[batch] = {
                "wall": wall,
                "tile": (
                    len(list((benchmarks / "tile").glob("*.tsv"))),
                    job_seconds(benchmarks / "tile"),
                ),
                "extract": (
                    len(list((benchmarks / "r0" / "extract").glob("*.tsv"))),
                    job_seconds(benchmarks / "r0" / "extract"),
                ),
            }
        first = folder / f"run_tile{args.tile_slides_per_job[0]}"
        tile_once = tile_in_one_process(sheet, folder / "one_process" / "tiles", args.config)
        extract_once = extract_in_one_process(
            first, sheet, folder / "one_process" / "r0", args.config
        )
    print(
        f"machine: {os.cpu_count()} CPUs; {args.slides} slides, config {args.config}, --cores {args.cores}"
    )
    print(
        f"{'tile batch':>10} {'wall s':>7} {'stage':>8} {'jobs':>6} {'jobs s':>8} {'1 proc s':>9} "
        f"{'start-up s/job':>15} {'share':>6}"
    )
    for batch, run in runs.items():
        for stage, once in (("tile", tile_once), ("extract", extract_once)):
            jobs, summed = run[stage]
            startup = (summed - once) / max(jobs, 1)
            print(
                f"{batch:>10} {run['wall']:>7.1f} {stage:>8} {jobs:>6} {summed:>8.1f} "
                f"{once:>9.1f} {startup:>15.2f} {(summed - once) / summed:>6.0%}"
            )
    if len(runs) > 1:
        base, *others = runs
        for batch in others:
            print(
                f"tile.slides_per_job {batch} against {base}: workflow wall time "
                f"{runs[base]['wall'] / runs[batch]['wall']:.2f} x faster, tiling jobs' time "
                f"{runs[base]['tile'][1] / runs[batch]['tile'][1]:.2f} x less"
            )


if __name__ == "__main__":
    main()
