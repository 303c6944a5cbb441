"""Resumable state for long jobs (MIL training, fine-tuning).

Checkpoints live in a folder that is NOT a declared Snakemake output, because Snakemake deletes the
declared outputs of a failed job, which would throw the progress away. Each carries a fingerprint
of the settings and inputs: a rerun with changed settings starts over (and says so) instead of
silently continuing from a state that no longer matches.

A job holds an exclusive lock on its checkpoint folder for as long as it runs: a job orphaned by a
killed Snakemake, still training, must not overwrite the state of the rerun that replaced it.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Self

import torch

from hnm.core.atomic import atomic_path
from hnm.core.errors import CheckpointBusyError, DiskFullError

log = logging.getLogger(__name__)


def fingerprint(settings: dict[str, Any]) -> str:
    """A stable hash of JSON-able settings (key order does not matter)."""
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed so multi-GB weight files need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Checkpointer:
    """Saves and restores one job's state under `directory`, guarded by a settings fingerprint."""

    LOCK_NAME = "lock"

    def __init__(self, directory: str | os.PathLike[str] | None, settings_fingerprint: str) -> None:
        self.directory = Path(directory) if directory else None
        self.fingerprint = settings_fingerprint
        self._lock = _lock_folder(self.directory) if self.directory else None

    def close(self) -> None:
        """Release the folder's lock (also released when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path | None:
        return self.directory / "state.pt" if self.directory else None

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it belongs to other settings."""
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as error:  # a torn or foreign file: start over, loudly
            log.warning("checkpoint %s is unreadable (%s); starting over", self.path, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning(
                "checkpoint %s was made with other settings (fingerprint %s, now %s); starting over",
                self.path,
                state.get("fingerprint"),
                self.fingerprint,
            )
            return None
        log.info("resuming from checkpoint %s (epoch %s)", self.path, state.get("epoch"))
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            with atomic_path(self.path) as temporary:
                torch.save({**state, "fingerprint": self.fingerprint}, temporary)
        except DiskFullError as error:
            raise DiskFullError(
                f"saving the checkpoint of epoch {state.get('epoch')} failed: {error} The "
                f"previous checkpoint in {self.directory}, if any, is intact, and the rerun "
                "continues from it."
            ) from error

    def clear(self) -> None:
        """Remove the state once the job's real outputs are written."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


def _lock_folder(directory: Path) -> IO[str]:
    """An open lock file in `directory` holding an exclusive flock, or CheckpointBusyError.

    A Checkpointer of a finished or failed job that is merely not yet garbage-collected in this
    process (a traceback can keep one alive) is collected before giving up.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Not a `with` block: the handle, and so the lock, is held for the job's life.
    handle = open(directory / Checkpointer.LOCK_NAME, "a+")  # noqa: SIM115
    if not _try_lock(handle):
        gc.collect()
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CheckpointBusyError(
                f"checkpoint folder {directory} is in use by another job (process {holder}); two "
                "jobs writing one folder would overwrite each other's state. If that job is an "
                "orphan of a killed Snakemake run, stop it (kill that process id), then rerun "
                "this command."
            )
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
