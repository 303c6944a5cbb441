"""Resumable state for long jobs (MIL training, fine-tuning).

Checkpoints live in a folder that is NOT a declared Snakemake output, because Snakemake deletes the
declared outputs of a failed job, which would throw the progress away. Each carries a fingerprint
of the settings and inputs: a rerun with changed settings starts over (and says so) instead of
silently continuing from a state that no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from hnm.core.atomic import atomic_path

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

    def __init__(self, directory: str | os.PathLike[str] | None, settings_fingerprint: str) -> None:
        self.directory = Path(directory) if directory else None
        self.fingerprint = settings_fingerprint

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
        with atomic_path(self.path) as temporary:
            torch.save({**state, "fingerprint": self.fingerprint}, temporary)

    def clear(self) -> None:
        """Remove the state once the job's real outputs are written."""
        if self.path is not None and self.path.exists():
            self.path.unlink()
