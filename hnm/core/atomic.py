"""Atomic output files.

Every output is written under a temporary name in the same folder and renamed into place only when
complete, so a job killed at any moment never leaves a file that looks finished (Snakemake, or a
person, would otherwise trust it on the next run).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _temporary_name(target: Path) -> Path:
    # Keep the suffix: PIL, pandas and h5py infer formats from it.
    return target.with_name(f".{target.stem}.tmp{os.getpid()}{target.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path`, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A job killed with SIGKILL cannot remove its temporary file; the rerun clears it.
    for stale in target.parent.glob(f".{target.stem}.tmp*{target.suffix}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    temporary = _temporary_name(target)
    try:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    """Let numpy scalars and paths into JSON without every caller converting them."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
