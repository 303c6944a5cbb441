"""Atomic output files.

Every output is written under a temporary name in the same folder and renamed into place only when
complete, so a job killed at any moment never leaves a file that looks finished (Snakemake, or a
person, would otherwise trust it on the next run).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hnm.core.errors import DiskFullError

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How a full disk reads when the errno is lost on the way: pyarrow and h5py put it in the text,
# torch.save's zip writer says only "unexpected pos" or "file write failed".
_DISK_FULL_TEXT = (
    "no space left on device",
    "disk quota exceeded",
    "errno 28",
    "errno = 28",
    "unexpected pos",
    "file write failed",
)


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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if is_disk_full(error):
            raise disk_full_error(target, error) from error
        raise


def is_disk_full(error: BaseException) -> bool:
    """Whether a write failed for lack of space, however the writing library reported it."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(error, (OSError, RuntimeError)):
        text = str(error).lower()
        return any(marker in text for marker in _DISK_FULL_TEXT)
    return False


def disk_full_error(target: str | os.PathLike[str], error: BaseException) -> DiskFullError:
    """A DiskFullError naming the file, the free space left there and how to resume."""
    target = Path(target)
    reported = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DiskFullError(
        f"no space left to write {target} ({free_space(target.parent)} free there; the writer "
        f"said: {reported}). Free space on that disk (or move the results folder to a larger "
        "one), then run the same command again: finished outputs are kept, and only the "
        "unfinished jobs run again."
    )


def free_space(folder: str | os.PathLike[str]) -> str:
    """Free space of the disk holding `folder`, for people ("1.2 GB"); "unknown" if not readable."""
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1000
    return "unknown"


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
