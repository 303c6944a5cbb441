"""GPU slots on the CPU, with fake GPU ids: distinct ids for concurrent jobs, a killed job's slot
freed by the kernel, extra jobs waiting their turn, a clear timeout, SLURM and no-GPU left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hnm.core.gpu_slots import acquire, command_prefix, gpu_slot, parse_gpus

REPO = Path(__file__).resolve().parents[1]
REPORT = "import os, sys, time; print(os.environ.get('CUDA_VISIBLE_DEVICES', '-'), flush=True); "


def job(
    lock_dir: Path, gpus: str, seconds: float, timeout: float = 60.0, env: dict | None = None
) -> subprocess.Popen:
    """A wrapped python job that prints its CUDA_VISIBLE_DEVICES, then sleeps."""
    command = [
        sys.executable, "-m", "hnm.core.gpu_slots", "--gpus", gpus, "--lock-dir", str(lock_dir),
        "--timeout", str(timeout), "--poll", "0.05", "--",
        sys.executable, "-c", REPORT + f"time.sleep({seconds})",
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    environment.update(env or {})
    environment["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        command, cwd=REPO, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out.strip(), err


def test_concurrent_jobs_get_distinct_gpus(tmp_path: Path) -> None:
    jobs = [job(tmp_path, "10,11,12", seconds=3.0) for _ in range(3)]
    results = [finish(process) for process in jobs]
    assert all(code == 0 for code, _, _ in results), results
    assert sorted(out for _, out, _ in results) == ["10", "11", "12"]


def test_a_killed_jobs_slot_is_free_again(tmp_path: Path) -> None:
    holder = job(tmp_path, "7", seconds=120.0)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "7"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    code, out, err = finish(job(tmp_path, "7", seconds=0.0, timeout=10.0))
    assert (code, out) == (0, "7"), err


def test_more_jobs_than_gpus_wait_then_proceed(tmp_path: Path) -> None:
    started = time.monotonic()
    jobs = [job(tmp_path, "3", seconds=1.0) for _ in range(3)]
    results = [finish(process) for process in jobs]
    assert [(code, out) for code, out, _ in results] == [(0, "3")] * 3
    assert time.monotonic() - started >= 3.0  # one at a time
    assert any("busy" in err and "waiting" in err for _, _, err in results)


def test_timeout_names_the_holder(tmp_path: Path) -> None:
    gpu, fd = acquire(["5"], tmp_path)
    try:
        code, out, err = finish(job(tmp_path, "5", seconds=0.0, timeout=0.3))
    finally:
        os.close(fd)
    assert code == 3 and out == ""
    assert "no free GPU slot among 5" in err and f"pid {os.getpid()}" in err


def test_slurm_and_empty_gpus_leave_the_environment_alone(tmp_path: Path) -> None:
    under_slurm = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "9"}
    slurm = job(tmp_path, "0,1", seconds=0.0, env=under_slurm)
    assert finish(slurm)[:2] == (0, "9")
    empty = job(tmp_path, "", seconds=0.0, env={"CUDA_VISIBLE_DEVICES": "8"})
    assert finish(empty)[:2] == (0, "8")
    assert not list(tmp_path.glob("*.lock"))


def test_in_process_slot_sets_and_restores_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with gpu_slot(["1", "2"], tmp_path, timeout_s=1.0) as gpu:
        assert gpu == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        with gpu_slot(["1", "2"], tmp_path, timeout_s=1.0) as second:
            assert second == "2"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_parse_gpus(monkeypatch) -> None:
    assert parse_gpus("") == [] and parse_gpus(None) == []
    assert parse_gpus("0, 2") == ["0", "2"] and parse_gpus([1, 3]) == ["1", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert parse_gpus("all") == ["4", "5"]
    with pytest.raises(Exception, match="twice"):
        parse_gpus("1,1")


def test_command_prefix_for_rules() -> None:
    assert command_prefix([]) == "" and command_prefix(None) == ""
    assert command_prefix([0, 1]) == "python -m hnm.core.gpu_slots --gpus 0,1 -- "
    assert command_prefix("all", "/tmp/locks") == (
        "python -m hnm.core.gpu_slots --gpus all --lock-dir /tmp/locks -- "
    )
