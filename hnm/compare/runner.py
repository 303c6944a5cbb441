"""Run a comparison's workflows: one folder per method and seed, sharing what they can.

Layout under the output folder:
    cohort/              the sheet, the slides (demo) and their tiles, built once
    seed{s}/_round0/     round 0's encoder and features at seed s, built once per seed
    seed{s}/{method}/    a whole run of one method at seed s

A later folder starts as hard links to the earlier one's `results/` (and a copy of Snakemake's
metadata for them), so Snakemake finds the shared outputs done and runs only the method's own jobs.
Stages replace outputs atomically (rename), never write into them, so one folder's run cannot
change another's files; after each run the shared files are checked to be the very same inodes,
which proves that nothing shared was recomputed with other settings.

A folder that already exists is run again as it is, so an interrupted comparison resumes where it
stopped (Snakemake redoes only unfinished jobs). One `hnm compare` at a time holds the output
folder (a lock file); holding it, any Snakemake lock left in a run folder is a killed run's, and is
removed before that folder resumes. Each folder keeps the Snakemake time of all its invocations
(`compare_seconds.json`), so a comparison that spans several sessions reports its whole cost.

With extract.keep_rounds, a method's run removes its round-0 features once its round-0 MIL and
probe are done. It removes its own links only: the inode stays with the seed's `_round0` folder
(whose run asks for the features as its target, so Snakemake keeps them there) and with the other
methods. Before a method's folder runs again, the links it removed are made again
(`_restore_pruned`), so a job that must rerun on round-0 features (a changed MIL setting) reads the
shared ones instead of extracting a copy of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from hnm.compare.spec import CompareSpec
from hnm.core.atomic import write_text
from hnm.core.errors import HnmError

log = logging.getLogger("hnm.compare")

REPO = Path(__file__).resolve().parents[2]
# Folders of results/ that the next level shares; everything else is the run's own.
COHORT_SHARED = ("sheet.tsv", "sheet_eval.tsv", "demo", "tiles")
ROUND0_SHARED = ("pretrain", "r0/encoder.pt", "r0/features")
# Shared files that a method's run may remove once used (extract.keep_rounds): not recomputed.
PRUNABLE_SHARED = ("r0/features",)
COHORT_TARGETS = ["tiles", "results/sheet.tsv", "results/sheet_eval.tsv"]
LOCK_NAME = ".compare.lock"
SECONDS_NAME = "compare_seconds.json"


@dataclass(frozen=True)
class RunRecord:
    """One workflow run of the comparison and how long Snakemake took for it (every
    invocation's time, for a comparison resumed after a stop)."""

    name: str
    folder: Path
    seconds: float


def run_comparison(
    spec: CompareSpec, out: Path, cores: int, snakemake_args: list[str]
) -> list[RunRecord]:
    with _hold(out):
        return _run_all(spec, out, cores, snakemake_args)


@contextlib.contextmanager
def _hold(out: Path) -> Iterator[None]:
    """The output folder's lock for this process's life, or an error naming the holder."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise HnmError(
                f"{out} is in use by another `hnm compare` (process {holder}); wait for it to "
                "end, or stop it, then run this command again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def _run_all(
    spec: CompareSpec, out: Path, cores: int, snakemake_args: list[str]
) -> list[RunRecord]:
    cohort = out / "cohort"
    seconds = _run(spec, cohort, spec.run_config(spec.seeds[0]), COHORT_TARGETS, cores, [])
    records = [RunRecord("cohort", cohort, seconds)]
    for seed in spec.seeds:
        round0 = out / f"seed{seed}" / "_round0"
        _share(cohort, round0)
        seconds = _run(spec, round0, spec.run_config(seed), ["features_round0"], cores, [])
        _check_shared(cohort, round0, COHORT_SHARED)
        records.append(RunRecord(f"seed{seed}/_round0", round0, seconds))
        for method in spec.methods:
            folder = out / f"seed{seed}" / method
            _share(round0, folder)
            _restore_pruned(round0, folder)
            overlay = spec.run_config(seed, method)
            seconds = _run(spec, folder, overlay, [], cores, snakemake_args)
            _check_shared(round0, folder, COHORT_SHARED + ROUND0_SHARED)
            records.append(RunRecord(f"seed{seed}/{method}", folder, seconds))
    return records


def _share(source: Path, folder: Path) -> None:
    """Start `folder` as hard links to `source`'s results (once; an existing folder is kept)."""
    if (folder / "results").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "results.linking"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source / "results", staging, copy_function=os.link, symlinks=True)
    metadata = source / ".snakemake" / "metadata"
    if metadata.is_dir():
        target = folder / ".snakemake" / "metadata"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(metadata, target)
    staging.rename(folder / "results")


def _restore_pruned(source: Path, folder: Path) -> list[Path]:
    """Link again the shared files of PRUNABLE_SHARED that an earlier run of `folder` removed.

    They are the source's very files (hard links), with the metadata Snakemake keeps for them in
    `folder`, so Snakemake finds them done and older than what was made from them."""
    restored = []
    for name in PRUNABLE_SHARED:
        origin = source / "results" / name
        if not origin.is_dir():
            continue
        for path in sorted(p for p in origin.rglob("*") if p.is_file()):
            twin = folder / "results" / path.relative_to(source / "results")
            if not twin.exists():
                twin.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, twin)
                restored.append(twin)
    if restored:
        log.info("%s: linked %d shared file(s) back (removed once used)", folder, len(restored))
    return restored


def _run(
    spec: CompareSpec,
    folder: Path,
    overlay: dict,
    targets: list[str],
    cores: int,
    extra: list[str],
) -> float:
    """Snakemake's wall time in `folder` (its console output goes to folder/snakemake.log)."""
    folder.mkdir(parents=True, exist_ok=True)
    configfile = folder / "compare.yaml"
    write_text(configfile, yaml.safe_dump(overlay, sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(folder),
        "--configfile",
        *spec.configfiles,
        str(configfile),
        "--cores",
        str(cores),
        "--rerun-incomplete",
        *extra,
        *targets,
    ]
    _remove_stale_lock(folder, command)
    log.info("running %s", folder)
    started = time.perf_counter()
    try:
        with open(folder / "snakemake.log", "w") as console:
            result = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, check=False)
    finally:
        seconds = _add_seconds(folder, time.perf_counter() - started)
    if result.returncode != 0:
        raise HnmError(
            f"the workflow in {folder} failed (exit {result.returncode}); its console output is "
            f"in {folder / 'snakemake.log'}. Fix the cause and run the same compare command "
            "again: finished folders are kept and the failed one resumes"
        )
    log.info("%s done (%.0f s of Snakemake time in all)", folder, seconds)
    return seconds


def _remove_stale_lock(folder: Path, command: list[str]) -> None:
    """Unlock a folder that a killed run left locked. Only `hnm compare` runs Snakemake in these
    folders, and this one holds the output folder (`_hold`), so a lock here is no live run's."""
    locks = folder / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return
    log.info("%s: removing the lock a stopped run left (snakemake --unlock)", folder)
    subprocess.run([*command, "--unlock"], capture_output=True, check=True)


def _add_seconds(folder: Path, seconds: float) -> float:
    """This invocation's seconds added to the folder's total; the total."""
    path = folder / SECONDS_NAME
    total = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    total += seconds
    write_text(path, json.dumps({"seconds": total}) + "\n")
    return total


def _check_shared(source: Path, folder: Path, shared: tuple[str, ...]) -> None:
    """Every shared file is still the same inode as the source's: nothing shared was redone.

    A file of PRUNABLE_SHARED may be gone (removed once used, extract.keep_rounds); one that is
    there must still be the shared one."""
    redone = []
    for name in shared:
        origin = source / "results" / name
        if not origin.exists():
            continue
        paths = (
            [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
        )
        for path in paths:
            twin = folder / "results" / path.relative_to(source / "results")
            if not twin.exists():
                if name not in PRUNABLE_SHARED:
                    redone.append(str(twin))
            elif twin.stat().st_ino != path.stat().st_ino:
                redone.append(str(twin))
    if redone:
        raise HnmError(
            f"{folder} recomputed {len(redone)} file(s) it should have shared with {source} "
            f"(first: {redone[0]}); a method may change only settings used after round-0 "
            "extraction. Delete that folder and check the comparison file's methods"
        )
