"""Running the real workflow on a tiny demo cohort in a scratch folder, for workflow and fault tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# The test configurations are files, so each can also be run by hand:
#   snakemake --configfile .test/config/tiny.yaml --directory /tmp/hnm-tiny --cores 2
TEST_CONFIGS = REPO / ".test" / "config"


@dataclass(frozen=True)
class FinishedRun:
    """A workflow run of the tiny test cohort at the default test config, and the jobs it ran."""

    folder: Path
    jobs: dict[str, int]


def load_test_config(name: str) -> dict:
    """The overlay `.test/config/{name}.yaml` (layered on config/config.yaml by the Snakefile)."""
    return yaml.safe_load((TEST_CONFIGS / f"{name}.yaml").read_text())


# Small enough that the whole chain (8 slides, rounds 0 and 1) runs in a minute or two on 2 cores.
TINY_CONFIG = load_test_config("tiny")


def deep_update(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            deep_update(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def share_results(source: Path, folder: Path, parts: tuple[str, ...]) -> None:
    """Start `folder` with `source`'s finished results (hard links to results/<part>, each part a
    path or a glob) and Snakemake's record of them, so a test that needs the tiny cohort's slides
    or tiles does not render or tile them again. Stages replace outputs by renaming, never write
    into them, so the source stays intact."""
    for part in parts:
        for origin in sorted((source / "results").glob(part)):
            target = folder / "results" / origin.relative_to(source / "results")
            target.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, target, copy_function=os.link)
            else:
                os.link(origin, target)
    shutil.copytree(source / ".snakemake" / "metadata", folder / ".snakemake" / "metadata")


def write_config(folder: Path, extra: dict | None = None, base: dict | None = None) -> Path:
    """The run's config overlay: `base` (TINY_CONFIG unless given) updated with `extra`."""
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY_CONFIG if base is None else base, extra or {})))
    return path


def command(folder: Path, *args: str, cores: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(folder),
        "--configfile",
        str(folder / "run.yaml"),
        "--cores",
        str(cores),
        "--rerun-incomplete",
        *args,
    ]


def run(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(folder, *args), capture_output=True, text=True, timeout=timeout, env=_env()
    )
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def resume(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The resume command of docs/usage.md: release the lock a killed run left, then rerun."""
    run(folder, "--unlock", *args, timeout=timeout)
    return run(folder, *args, timeout=timeout)


def run_and_kill(
    folder: Path, until: Callable[[], bool], *args: str, timeout: float = 600, grace: float = 0.0
) -> None:
    """Start the workflow and SIGKILL snakemake and all its jobs `grace` s after `until()` holds."""
    process = subprocess.Popen(
        command(folder, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=_env(),
    )
    deadline = time.monotonic() + timeout
    try:
        while not until():
            if process.poll() is not None:
                raise AssertionError("the workflow finished before the kill point was reached")
            if time.monotonic() > deadline:
                raise AssertionError("the kill point was not reached in time")
            time.sleep(0.05)
        time.sleep(grace)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def jobs_run(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Rule name -> number of jobs, from snakemake's job-stats table."""
    counts: dict[str, int] = {}
    text = result.stdout + result.stderr
    if "Job stats:" not in text:
        return counts
    table = text.split("Job stats:", 1)[1].splitlines()[3:]
    for line in table:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def wildcards_run(result: subprocess.CompletedProcess[str], rule: str, name: str) -> set[str]:
    """The values of wildcard `name` of every job of `rule` the run started, from the job blocks
    Snakemake prints ("rule extract:" ... "wildcards: round=0, batch=b01")."""
    values: set[str] = set()
    current = ""
    for line in (result.stdout + result.stderr).splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            current = stripped.split()[1][:-1]
        elif current == rule and stripped.startswith("wildcards:"):
            for pair in stripped[len("wildcards:") :].split(","):
                key, _, value = pair.strip().partition("=")
                if key == name:
                    values.add(value)
    return values


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
