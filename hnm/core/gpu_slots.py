"""Which GPU a job runs on, on a workstation with several: one lock file per GPU id.

Snakemake counts a `gpu` resource, so it never starts more GPU jobs than GPUs, but it does not say
which GPU a job gets; without help every job lands on GPU 0. A job takes a slot by locking
<lock-dir>/gpu<ID>.lock with fcntl.flock, and runs with CUDA_VISIBLE_DEVICES=<ID>. The lock
belongs to the open file, which the job keeps for its whole life (the wrapper execs the command,
so the command itself holds it), and the kernel drops it when the process dies, also on SIGKILL
or a crash: a slot can never leak. Children that inherit the file (e.g. data-loader workers) hold
it until they exit too. When every slot is taken a job waits, polling, up to a timeout, and then
fails with a message that names the holders.

    python -m hnm.core.gpu_slots --gpus 0,1,2,3 --lock-dir /tmp/hnm-gpu-slots -- \\
        python -m hnm extract ...

`--gpus` is a comma list of ids, `all` (the GPUs CUDA_VISIBLE_DEVICES or nvidia-smi lists), or
empty: then, and under SLURM (SLURM_JOB_ID set: the scheduler has set CUDA_VISIBLE_DEVICES),
the command runs untouched. `command_prefix(config["resources"]["gpus"])` gives a rule that
prefix ("" when no GPUs are listed); the rule still declares `resources: gpu=1`, so Snakemake
never starts more GPU jobs than there are slots and the wait stays the exception.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hnm.core.errors import ConfigError, HnmError

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "hnm-gpu-slots"
DEFAULT_TIMEOUT_S = 24 * 3600.0
DEFAULT_POLL_S = 2.0


class GpuSlotTimeout(HnmError):
    """Every GPU slot stayed taken for the whole timeout."""


def parse_gpus(spec: str | Sequence[str | int] | None) -> list[str]:
    """GPU ids from a comma list, a list, `all`, or nothing (empty: no slot handling)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return visible_gpus()
        items: Sequence[str | int] = [item for item in spec.split(",") if item.strip()]
    else:
        items = spec
    ids = [str(item).strip() for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"resources.gpus lists a GPU twice: {', '.join(ids)}")
    return ids


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [item.strip() for item in visible.split(",") if item.strip()]
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise ConfigError(
            f"resources.gpus is 'all' but the GPUs cannot be listed ({error}); "
            "give the ids, e.g. [0, 1]"
        ) from error
    return [line.strip() for line in listed.splitlines() if line.strip()]


def _try_lock(path: Path) -> int | None:
    """An open, flock-ed descriptor of `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holders(lock_dir: Path, gpus: Sequence[str]) -> str:
    """ "gpu<ID>: pid <PID>" for each slot, read from the lock files (written by their holders)."""
    parts = []
    for gpu in gpus:
        try:
            pid = (lock_dir / f"gpu{gpu}.lock").read_text().strip() or "?"
        except OSError:
            pid = "?"
        parts.append(f"gpu{gpu}: pid {pid}")
    return ", ".join(parts)


def acquire(
    gpus: Sequence[str],
    lock_dir: Path = DEFAULT_LOCK_DIR,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> tuple[str, int]:
    """(GPU id, locked descriptor) of the first free slot, waiting up to timeout_s for one."""
    if not gpus:
        raise ConfigError("no GPU ids to take a slot from")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        for gpu in gpus:
            fd = _try_lock(lock_dir / f"gpu{gpu}.lock")
            if fd is not None:
                return gpu, fd
        if time.monotonic() >= deadline:
            raise GpuSlotTimeout(
                f"no free GPU slot among {', '.join(gpus)} after {timeout_s:.0f} s "
                f"({_holders(lock_dir, gpus)}; locks in {lock_dir}); are more GPU jobs running "
                "than resources.gpus lists, or is another workflow using the same GPUs?"
            )
        if not announced:
            print(
                f"gpu_slots: all {len(gpus)} GPU slot(s) busy ({_holders(lock_dir, gpus)}); "
                f"waiting up to {timeout_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


@contextmanager
def gpu_slot(
    gpus: Sequence[str],
    lock_dir: Path = DEFAULT_LOCK_DIR,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> Iterator[str | None]:
    """In-process form: the block runs with CUDA_VISIBLE_DEVICES set to a slot's GPU (before CUDA
    is initialised, or it has no effect); None and no change with no ids or under SLURM."""
    if not gpus or os.environ.get("SLURM_JOB_ID"):
        yield None
        return
    gpu, fd = acquire(gpus, lock_dir, timeout_s, poll_s)
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        yield gpu
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        os.close(fd)


def run_in_slot(
    command: Sequence[str],
    gpus: Sequence[str],
    lock_dir: Path = DEFAULT_LOCK_DIR,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> None:
    """Replace this process by `command`, holding a slot's lock (the descriptor survives exec)."""
    env = dict(os.environ)
    if gpus and not env.get("SLURM_JOB_ID"):
        gpu, fd = acquire(gpus, lock_dir, timeout_s, poll_s)
        os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = gpu
    os.execvpe(command[0], list(command), env)


def command_prefix(
    gpus: str | Sequence[str | int] | None, lock_dir: str | os.PathLike[str] | None = None
) -> str:
    """The shell prefix a rule puts before its GPU command, from config's resources.gpus: empty
    when no GPUs are listed (the command runs as it is)."""
    if not gpus:
        return ""
    spec = gpus if isinstance(gpus, str) else ",".join(str(gpu) for gpu in gpus)
    words = ["python", "-m", "hnm.core.gpu_slots", "--gpus", spec]
    if lock_dir is not None:
        words += ["--lock-dir", str(lock_dir)]
    return shlex.join(words) + " -- "


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hnm.core.gpu_slots",
        description="Run a command on one GPU slot of this workstation (see the module docstring).",
    )
    parser.add_argument("--gpus", default="", help="comma list of GPU ids, 'all', or empty")
    parser.add_argument("--lock-dir", type=Path, default=DEFAULT_LOCK_DIR)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL_S, help="seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    try:
        run_in_slot(command, parse_gpus(args.gpus), args.lock_dir, args.timeout, args.poll)
    except HnmError as error:
        print(f"gpu_slots: {error}", file=sys.stderr)
        return 3
    except OSError as error:
        print(f"gpu_slots: cannot run {command[0]!r}: {error}", file=sys.stderr)
        return 127
    return 0  # not reached: run_in_slot execs


if __name__ == "__main__":
    raise SystemExit(main())
