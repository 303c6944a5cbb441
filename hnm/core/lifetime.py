"""A stage ends when the process that started it dies.

Snakemake starts every stage as a child (`python -m hnm ...`). When Snakemake is killed with
SIGKILL it cannot stop its children, and an orphaned stage would go on for hours, writing
checkpoints that the rerun's job also writes. On Linux the kernel can send the child SIGTERM when
its parent dies (PR_SET_PDEATHSIG). That signal is tied to the parent *thread*, and is lost if the
parent died before the request was made, so a watcher thread also checks that the parent is still
the original process, and the stage ends if it is not.

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

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 1.0
OPT_OUT = "HNM_OUTLIVE_PARENT"


def exit_with_parent(poll_seconds: float = WATCH_SECONDS) -> None:
    """Arrange for this process to end when its parent dies; call first thing at CLI start."""
    if os.environ.get(OPT_OUT) == "1":
        return
    parent = os.getppid()
    _request_death_signal()
    if os.getppid() != parent or parent == 1:
        return  # started detached (or the parent is init): there is no parent to follow
    watcher = threading.Thread(
        target=_watch_parent, args=(parent, poll_seconds), name="hnm-parent-watch", daemon=True
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


def _watch_parent(parent: int, poll_seconds: float) -> None:
    """Poll until the parent changes (it died and we were re-parented), then end like SIGTERM."""
    event = threading.Event()
    while not event.wait(poll_seconds):
        if os.getppid() != parent:
            log.error(
                "the process that started this stage (pid %d) has ended; stopping, since "
                "the rerun of the workflow will redo this job",
                parent,
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return
