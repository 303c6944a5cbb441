"""A stage ends when the process that started it dies.

Snakemake starts every stage as a child (`python -m hnm ...`), usually through a bash wrapper
(`bash -c "set -euo pipefail; ...; python -m hnm ... > log"`). When Snakemake is killed with
SIGKILL it cannot stop its children, and an orphaned stage would go on for hours, writing
checkpoints that the rerun's job also writes. On Linux the kernel can send the child SIGTERM when
its parent dies (PR_SET_PDEATHSIG). That signal is tied to the parent *thread*, is lost if the
parent died before the request was made, and does not help when the parent is the bash wrapper
(which outlives Snakemake), so a watcher thread also checks that the parent is still the original
process and, when the parent is a shell, that the shell's parent is still its original one; the
stage ends if either changed.

Set HNM_OUTLIVE_PARENT=1 to let a stage run on after its parent (for a hand-started stage under
nohup, say).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 1.0
OPT_OUT = "HNM_OUTLIVE_PARENT"
# Wrappers that Snakemake, SLURM scripts or a user put between a job and what started it.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})


def exit_with_parent(poll_seconds: float = WATCH_SECONDS) -> None:
    """Arrange for this process to end when its parent dies; call first thing at CLI start."""
    if os.environ.get(OPT_OUT) == "1":
        return
    parent = os.getppid()
    if parent == 1:
        return  # started detached (by init, or as a container's first process): nobody to follow
    _request_death_signal()
    if os.getppid() != parent:
        _end(parent)  # the parent died before the death signal was asked for
    grandparent = _parent_of(parent) if _name_of(parent) in SHELLS else None
    watcher = threading.Thread(
        target=_watch,
        args=(parent, None if grandparent == 1 else grandparent, poll_seconds),
        name="hnm-parent-watch",
        daemon=True,
    )
    watcher.start()


def _request_death_signal() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) through libc; False where unavailable (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, grandparent: int | None, poll_seconds: float) -> None:
    """Poll until the parent, or the wrapping shell's parent, is no longer the original one."""
    event = threading.Event()
    while not event.wait(poll_seconds):
        if os.getppid() != parent:
            _end(parent)
            return
        if grandparent is not None and _parent_of(parent) != grandparent:
            _end(grandparent)
            return


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` from /proc (None where /proc is absent or the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1])


def _name_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _end(starter: int) -> None:
    """End as SIGTERM would: the rerun of the workflow redoes this job from its checkpoint."""
    log.error(
        "the process that started this stage (pid %d) has ended; stopping this stage too. "
        "Rerun the workflow to redo it (finished outputs are kept)",
        starter,
    )
    os.kill(os.getpid(), signal.SIGTERM)
