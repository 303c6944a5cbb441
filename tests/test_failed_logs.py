"""A failed job's cause reaches the console: the onerror handler prints hnm's error line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from hnm.core.failed_logs import failed_job_logs, failure_summary, telling_lines
from tests.workflow_runner import REPO, _env

SNAKEMAKE_LOG = """\
[Sun Dec  6 05:07:10 2026]
Error in rule tile:
    message: None
    jobid: 7
    input: /data/nores.tiff
    output: results/tiles/nores.h5, results/qc/nores.png
    log: results/logs/tile/nores.log (check log file(s) for error details)
    shell:
        python -m hnm tile --slide /data/nores.tiff > results/logs/tile/nores.log 2>&1
        (command exited with non-zero exit code)
Error in rule extract_b0:
    jobid: 9
    log: results/logs/r0/extract_b0.log, results/logs/r0/extract_b0.extra.log (check log file(s) for error details)
Error in rule tile:
    log: results/logs/tile/nores.log (check log file(s) for error details)
Shutting down, this might take some time.
"""


def test_failed_job_logs_are_found_once_each() -> None:
    assert failed_job_logs(SNAKEMAKE_LOG) == [
        ("tile", [Path("results/logs/tile/nores.log")]),
        (
            "extract_b0",
            [Path("results/logs/r0/extract_b0.log"), Path("results/logs/r0/extract_b0.extra.log")],
        ),
    ]


def test_hnm_error_lines_win_over_the_tail() -> None:
    log = "INFO start\nhnm tile: error: slide 'x': no resolution\nmore\n"
    assert telling_lines(log) == ["hnm tile: error: slide 'x': no resolution"]
    traceback = "\n".join(f"line {i}" for i in range(20))
    assert telling_lines(traceback) == [f"line {i}" for i in range(14, 20)]


def test_summary_reads_the_logs_beside_the_run(tmp_path: Path) -> None:
    (tmp_path / "results/logs/tile").mkdir(parents=True)
    (tmp_path / "results/logs/tile/nores.log").write_text("hnm tile: error: no resolution\n")
    (tmp_path / "snakemake.log").write_text(SNAKEMAKE_LOG)
    summary = failure_summary([tmp_path / "snakemake.log"], workdir=tmp_path)
    assert (
        "tile failed (results/logs/tile/nores.log):\n    hnm tile: error: no resolution" in summary
    )
    assert failure_summary(None) == "" and failure_summary(tmp_path / "missing.log") == ""


def test_a_slide_without_resolution_is_named_on_the_console(tmp_path: Path) -> None:
    """Tiling a sheet with one TIFF that has no resolution tags: the run fails, and the console
    (not only results/logs/tile/nores.log) says which slide and what to do."""
    slides = tmp_path / "slides"
    slides.mkdir()
    image = np.full((512, 512, 3), 230, np.uint8)
    image[100:400, 100:400] = (180, 90, 160)
    tifffile.imwrite(slides / "nores.tiff", image, tile=(256, 256), photometric="rgb")
    rows = ["slide_id\tpath\tlabel\tsplit"]
    splits = [(1, "train"), (0, "train"), (1, "val"), (0, "val"), (1, "test"), (0, "test")]
    for index, (label, split) in enumerate(splits):
        shutil.copy(REPO / "tests/data/slides/small.svs", slides / f"s{index}.svs")
        rows.append(f"s{index}\tslides/s{index}.svs\t{label}\t{split}")
    rows.append("nores\tslides/nores.tiff\t0\ttrain")
    (tmp_path / "sheet.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "run.yaml").write_text("sheet: sheet.tsv\ndevice: cpu\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
        + ["--configfile", str(tmp_path / "run.yaml"), "--cores", "1"]
        + ["results/tiles/nores.h5", "--quiet", "all"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert result.returncode != 0
    console = result.stdout + result.stderr
    assert "hnm tile: error: slide 'nores'" in console
    assert "the slide has no resolution" in console and "'mpp' column" in console


def test_without_a_snakemake_log_the_recent_job_logs_speak(tmp_path: Path) -> None:
    import os
    import time

    logs = tmp_path / "results/logs/tile"
    logs.mkdir(parents=True)
    (logs / "old.log").write_text("hnm tile: error: an earlier run's failure\n")
    os.utime(logs / "old.log", (time.time() - 100, time.time() - 100))
    (logs / "fine.log").write_text("INFO tiled 10 patches\n")
    (logs / "nores.log").write_text("hnm tile: error: no resolution\n")
    summary = failure_summary([], workdir=tmp_path, since=time.time() - 10)
    assert "nores failed (" in summary and "no resolution" in summary
    assert "earlier run" not in summary and "fine" not in summary
