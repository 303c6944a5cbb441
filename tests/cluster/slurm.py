"""A real single-node SLURM cluster on loopback, for tests that submit the workflow through sbatch.

Why a real cluster and not a mock: the SLURM executor plugin talks to sbatch, squeue and srun, and the
failures that matter (a job step that cannot find the configuration, a GPU request the scheduler
refuses, a job the status poller loses) only show up against the real daemons. The Debian packages
slurmctld, slurmd, slurm-client and munge are enough; this module writes a throwaway configuration
into a scratch folder, starts munged, slurmctld and slurmd as root, and always takes them down again.

The configuration must also be reachable at /etc/slurm/slurm.conf: the plugin's job step removes every
SLURM_* variable (SLURM_CONF included) before its inner `srun`, which then reads the compiled-in
default path. The files there are replaced by symlinks for the cluster's lifetime and whatever was
there before is put back at teardown. Because that path is global, one cluster runs per machine at a
time; a lock file serialises concurrent test sessions.

Use `cluster_fixture(scratch)` from a pytest fixture: it skips when the cluster cannot start (no
packages, not root), or fails with the daemons' log tails when HNM_REQUIRE_CLUSTER=1 (CI).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ETC_SLURM = Path("/etc/slurm")
MUNGE_RUN = Path("/run/munge")
MUNGE_PID = MUNGE_RUN / "munged.pid"
MUNGE_LOG = Path("/var/log/munge/munged.log")
LOCK_PATH = Path("/tmp/hnm-slurm-test-cluster.lock")
# First line of every file this harness writes, so a symlink left by a killed session is recognised
# as stale (and removed) rather than "restored" as if it were the machine's own configuration.
MARKER = "# written by the hnm test harness (tests/cluster/slurm.py); safe to delete"
CLIENT_TOOLS = ("slurmctld", "slurmd", "scontrol", "sinfo", "squeue", "sbatch", "srun", "scancel")
NODE_KEYS = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
REQUIRE_ENV = "HNM_REQUIRE_CLUSTER"


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started; `reason` is one line, `logs` the daemons' log tails."""

    def __init__(self, reason: str, logs: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs = logs


def client_env(conf: Path | None = None) -> dict[str, str]:
    """The caller's environment minus SLURM_* (a pytest run inside a SLURM job must not leak its
    job id into snakemake, which would then think it is a job step), plus SLURM_CONF if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if conf is not None:
        env["SLURM_CONF"] = str(conf)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"({error.strerror or error})"
    return "\n".join(text[-lines:]) or "(empty)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stop_by_pid_file(pid_file: Path, expected_name: str, timeout: float = 15.0) -> str | None:
    """SIGTERM the daemon named in `pid_file` (only if /proc says it is `expected_name`, so a reused
    pid is never hit), SIGKILL it after `timeout`; return a problem or None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    name = _process_name(pid)
    if not name.startswith(expected_name[:15]):  # comm is truncated to 15 characters
        return f"pid {pid} in {pid_file} is {name!r}, not {expected_name}; left alone"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return None
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"{expected_name} (pid {pid}) ignored SIGTERM for {timeout:.0f} s; killed"


def parse_node_line(slurmd_c: str) -> dict[str, str]:
    """The hardware keys of `slurmd -C`'s first line (CPUs, RealMemory, ...), never more than the
    node really has: slurmd refuses to register a node that claims more than it finds."""
    first = slurmd_c.strip().splitlines()[0] if slurmd_c.strip() else ""
    values = dict(re.findall(r"(\w+)=(\S+)", first))
    if "CPUs" not in values or "RealMemory" not in values:
        raise ClusterUnavailable(f"`slurmd -C` printed no CPUs/RealMemory: {first!r}")
    return {key: values[key] for key in NODE_KEYS if key in values}


def parse_jobs(scontrol_output: str) -> dict[str, dict[str, str]]:
    """`scontrol show job -o` (one job per line) as {job id: {key: value}}."""
    jobs: dict[str, dict[str, str]] = {}
    for line in scontrol_output.splitlines():
        fields = dict(re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


@dataclass
class SlurmCluster:
    """One controller and one node (`localhost`, with a fake GPU) on loopback, in `scratch`.

    A context manager: `with SlurmCluster(path) as cluster:` starts it (raising ClusterUnavailable
    with the log tails when it cannot) and always tears it down, also on errors and Ctrl-C.
    """

    scratch: Path
    cluster_name: str = "hnmtest"
    # Fake GPUs on the node. Each is a character device (1,3 = /dev/null's numbers): enough for
    # slurmd to accept the gres.conf line and for jobs to get CUDA_VISIBLE_DEVICES, with no GPU.
    gpus: int = 1
    # RealMemory to declare for the node; None = what `slurmd -C` finds. Declaring more than the
    # machine has makes slurmd refuse the node (the tests use that to exercise a failed start).
    real_memory_mb: int | None = None
    # Not proctrack/linuxproc: with it, `scancel` of a plugin job (a batch script running
    # `python -m snakemake`, which catches SIGTERM, around an `srun` step) left the batch script's
    # snakemake running forever, reparented to init. proctrack/pgid kills it; neither needs cgroups.
    proctrack: str = "proctrack/pgid"
    start_timeout: float = 60.0
    lock_timeout: float = 600.0
    # Filled by start(): the node's hardware line and the daemons' pids.
    node: dict[str, str] = field(default_factory=dict, init=False)
    daemon_pids: dict[str, int] = field(default_factory=dict, init=False)
    _cleanups: list = field(default_factory=list, init=False, repr=False)

    # ----- paths -------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.scratch / "etc" / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.scratch / "etc" / "gres.conf"

    @property
    def ctld_log(self) -> Path:
        return self.scratch / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.scratch / "log" / "slurmd.log"

    @property
    def ctld_pid(self) -> Path:
        return self.scratch / "run" / "slurmctld.pid"

    @property
    def slurmd_pid(self) -> Path:
        return self.scratch / "run" / "slurmd.pid"

    @property
    def cpus(self) -> int:
        return int(self.node["CPUs"])

    @property
    def memory_mb(self) -> int:
        return int(self.node["RealMemory"])

    # ----- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bring the cluster up; on any failure undo what was done and raise ClusterUnavailable."""
        try:
            self._install_sigterm_handler()
            self._check_prerequisites()
            self._take_lock()
            self._ensure_munge()
            self._write_config()
            self._link_config()
            self._start_controller()
            self._start_node()
        except BaseException as error:
            logs = self.log_tails()
            self.stop()
            if isinstance(error, ClusterUnavailable):
                error.logs = error.logs or logs
                raise
            if isinstance(error, Exception):
                raise ClusterUnavailable(f"{type(error).__name__}: {error}", logs) from error
            raise

    def stop(self) -> list[str]:
        """Undo every step of start() that happened, newest first; never raises (teardown must run
        to the end), returns the problems met on the way."""
        problems: list[str] = []
        while self._cleanups:
            what, undo = self._cleanups.pop()
            try:
                problem = undo()
            except Exception as error:  # noqa: BLE001 - keep tearing down
                problem = f"{type(error).__name__}: {error}"
            if problem:
                problems.append(f"{what}: {problem}")
        return problems

    # ----- steps of start() --------------------------------------------------------------------
    def _install_sigterm_handler(self) -> None:
        """Turn SIGTERM (CI cancelling the run) into KeyboardInterrupt so pytest's teardown, and with
        it stop(), still runs; only where nobody else handles SIGTERM already."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)
        self._cleanups.append(
            ("SIGTERM handler", lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL) and None)
        )

    def _check_prerequisites(self) -> None:
        missing = [tool for tool in (*CLIENT_TOOLS, "munged", "munge") if not shutil.which(tool)]
        if missing:
            raise ClusterUnavailable(
                f"SLURM/munge not installed (missing {', '.join(missing)}); install the Debian "
                "packages slurmctld slurmd slurm-client munge"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable(
                "the test cluster runs its daemons as root; run pytest as root"
            )
        if not Path("/etc/munge/munge.key").exists():
            raise ClusterUnavailable(
                "/etc/munge/munge.key is missing (reinstall the munge package)"
            )

    def _take_lock(self) -> None:
        handle = open(LOCK_PATH, "a+")  # noqa: SIM115 - held for the cluster's lifetime
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    handle.close()
                    raise
                if time.monotonic() > deadline:
                    handle.close()
                    raise ClusterUnavailable(
                        f"another test session holds {LOCK_PATH} (its cluster owns "
                        f"/etc/slurm/slurm.conf) for more than {self.lock_timeout:.0f} s"
                    ) from None
                time.sleep(1.0)

        def release() -> None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

        self._cleanups.append(("lock", release))

    def _munge_works(self) -> bool:
        result = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, env=client_env())
        return result.returncode == 0

    def _ensure_munge(self) -> None:
        """Reuse a running munged; otherwise start one as the munge user and stop it at teardown."""
        if self._munge_works():
            return
        MUNGE_RUN.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        result = subprocess.run(
            ["munged"], user="munge", group="munge", extra_groups=[],
            capture_output=True, text=True, timeout=30, env=client_env(),
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"munged did not start (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}",
                f"--- {MUNGE_LOG} ---\n{_tail(MUNGE_LOG, 20)}",
            )
        self._cleanups.append(("munged", lambda: stop_by_pid_file(MUNGE_PID, "munged")))
        self._wait(self._munge_works, "munged to answer `munge -n`")

    def _write_config(self) -> None:
        for folder in ("etc", "state", "spool", "log", "run", "dev"):
            (self.scratch / folder).mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(
            ["slurmd", "-C"], capture_output=True, text=True, timeout=30, env=client_env()
        )
        if probe.returncode != 0:
            raise ClusterUnavailable(f"`slurmd -C` failed: {probe.stderr.strip()}")
        self.node = parse_node_line(probe.stdout)
        if self.real_memory_mb is not None:
            self.node["RealMemory"] = str(self.real_memory_mb)
        devices = [self.scratch / "dev" / f"fakegpu{index}" for index in range(self.gpus)]
        for device in devices:
            if not device.exists():
                # gres.conf refuses a plain file: it must be a character device.
                os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        hardware = " ".join(f"{key}={value}" for key, value in self.node.items())
        settings = {
            "ClusterName": self.cluster_name,
            "SlurmctldHost": "localhost",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "MpiDefault": "none",
            "ProctrackType": self.proctrack,
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "JobCompType": "jobcomp/none",
            "AccountingStorageType": "accounting_storage/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            # Without a default, a job that names no memory is given the whole node.
            "DefMemPerCPU": 500,
            "ReturnToService": 2,
            # Finished jobs stay visible to squeue/scontrol for 5 min: the plugin's squeue-based
            # status checks and the tests' job records read them there.
            "MinJobAge": 300,
            # Cancelled jobs get SIGKILL 5 s after SIGTERM instead of 30 s: faster teardown.
            "KillWait": 5,
            "MailProg": "/bin/true",
            "GresTypes": "gpu",
            "StateSaveLocation": self.scratch / "state",
            "SlurmdSpoolDir": self.scratch / "spool",
            "SlurmctldLogFile": self.ctld_log,
            "SlurmdLogFile": self.slurmd_log,
            "SlurmctldPidFile": self.ctld_pid,
            "SlurmdPidFile": self.slurmd_pid,
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
        }
        lines = [MARKER, *(f"{key}={value}" for key, value in settings.items())]
        lines.append(
            f"NodeName=localhost NodeAddr=127.0.0.1 {hardware} Gres=gpu:fake:{self.gpus} "
            "State=UNKNOWN"
        )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        self.gres_conf.write_text(
            "\n".join(
                [MARKER]
                + [f"NodeName=localhost Name=gpu Type=fake File={device}" for device in devices]
            )
            + "\n"
        )

    def _link_config(self) -> None:
        created_dir = not ETC_SLURM.exists()
        ETC_SLURM.mkdir(parents=True, exist_ok=True)
        if created_dir:
            self._cleanups.append(("/etc/slurm", lambda: _rmdir_if_empty(ETC_SLURM)))
        for source in (self.conf, self.gres_conf):
            target = ETC_SLURM / source.name
            backup = target.with_name(f"{target.name}.hnm-test-backup")
            if target.is_symlink() or target.exists():  # is_symlink: also a dangling link
                if _is_stale_harness_file(target):
                    target.unlink()
                else:
                    os.replace(target, backup)
                    self._cleanups.append((f"restore {target}", _restorer(backup, target)))
            target.symlink_to(source)
            self._cleanups.append((f"unlink {target}", _unlinker(target, source)))

    def _start_controller(self) -> None:
        self._run_daemon(["slurmctld", "-c"], "slurmctld", self.ctld_pid)
        self._wait(self._controller_up, "`scontrol ping` to report the controller UP")

    def _start_node(self) -> None:
        self._run_daemon(["slurmd", "-N", "localhost"], "slurmd", self.slurmd_pid)
        self._wait(self._node_idle, "sinfo to show node localhost idle")
        # Jobs may still be running when the daemons are stopped; cancel them first, then kill
        # any job process that escaped the cancel (newest cleanup runs first, so both precede
        # stopping slurmd and slurmctld).
        self._cleanups.append(("stray job processes", self.kill_stray_job_processes))
        self._cleanups.append(("cancel jobs", self._cancel_everything))

    # ----- helpers -----------------------------------------------------------------------------
    def _run_daemon(self, argv: list[str], name: str, pid_file: Path) -> None:
        """Start a self-daemonising SLURM daemon and register its stop (by its pid file)."""
        self._cleanups.append((name, lambda: stop_by_pid_file(pid_file, name)))
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=client_env(self.conf)
        )
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"`{' '.join(argv)}` exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        self._wait(pid_file.exists, f"{name} to write {pid_file}")
        with contextlib.suppress(ValueError, IndexError, OSError):
            self.daemon_pids[name] = int(pid_file.read_text().split()[0])

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise ClusterUnavailable(f"timed out after {self.start_timeout:.0f} s waiting for {what}")

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A SLURM client command against this cluster (never raises on a non-zero exit)."""
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout,
            env=client_env(self.conf),
        )  # fmt: skip

    def _controller_up(self) -> bool:
        result = self.run("scontrol", "ping", timeout=10)
        return result.returncode == 0 and " is UP" in result.stdout

    def node_state(self) -> str:
        return self.run(
            "sinfo", "-h", "-N", "-n", "localhost", "-o", "%t", timeout=10
        ).stdout.strip()

    def _node_idle(self) -> bool:
        state = self.node_state()
        # A node slurmd refused (hardware below its line) or drained will never turn idle: stop now.
        if state.rstrip("*~#!%$@^-") in ("inval", "drain", "drng", "fail"):
            reason = self.run("sinfo", "-h", "-R", "-o", "%E", timeout=10).stdout.strip()
            raise ClusterUnavailable(f"node localhost is {state}: {reason or 'no reason given'}")
        return state == "idle"

    def _cancel_everything(self) -> str | None:
        self.run("scancel", "--full", "--user=root", timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i").stdout.strip():
                return None
            time.sleep(0.5)
        return "jobs still listed 20 s after scancel --full"

    def stray_job_processes(self) -> list[int]:
        """Processes of this cluster's jobs (SLURM_JOB_ID set and SLURM_CONF naming our file in
        their environment) that are still alive."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ and any(item.startswith(b"SLURM_JOB_ID=") for item in environ):
                if pid_alive(int(entry.name)):
                    found.append(int(entry.name))
        return found

    def kill_stray_job_processes(self) -> str | None:
        """SIGKILL job processes the scheduler lost track of; say which, since that is a bug
        somewhere (in the job, the plugin, or this configuration) worth seeing."""
        strays = self.stray_job_processes()
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if strays:
            return f"killed {len(strays)} job process(es) still alive after scancel: {strays}"
        return None

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still knows (finished ones stay MinJobAge = 300 s), by job id."""
        return parse_jobs(self.run("scontrol", "show", "job", "-o").stdout)

    def running_job_ids(self) -> list[str]:
        out = self.run("squeue", "-h", "-t", "R", "-o", "%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for path in (self.ctld_log, self.slurmd_log, MUNGE_LOG):
            if path.exists():
                parts.append(f"--- {path} (last {lines} lines) ---\n{_tail(path, lines)}")
        if self.node_state_safe():
            parts.append(f"--- sinfo -R ---\n{self.node_state_safe()}")
        return "\n".join(parts)

    def node_state_safe(self) -> str:
        try:
            if not self.conf.exists() or not shutil.which("sinfo"):
                return ""
            return self.run("sinfo", "-R", "-h", timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _is_stale_harness_file(path: Path) -> bool:
    """A leftover symlink from a killed session: it points at a file this harness wrote. (A
    dangling link is not known to be ours: it is put aside and restored like any other file.)"""
    if not path.is_symlink() or not path.exists():
        return False
    try:
        return path.read_text(errors="replace").startswith(MARKER)
    except OSError:
        return False


def _unlinker(target: Path, source: Path):
    def undo() -> str | None:
        if target.is_symlink() and Path(os.readlink(target)) == source:
            target.unlink()
            return None
        return f"{target} no longer points at {source}; left alone"

    return undo


def _restorer(backup: Path, target: Path):
    def undo() -> str | None:
        if target.is_symlink() or target.exists():
            return f"{target} exists again; the original stays at {backup}"
        os.replace(backup, target)
        return None

    return undo


@dataclass
class JobRecorder:
    """Samples `scontrol show job` in a thread while a workflow runs, so the tests see every job
    (its rule in Comment, its GPU request in TresPerJob, its final state) even if slurmctld purged
    it before the run ended."""

    cluster: SlurmCluster
    interval: float = 1.0
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> JobRecorder:
        self._thread = threading.Thread(target=self._loop, name="slurm-job-recorder", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sample()

    def sample(self) -> None:
        try:
            current = self.cluster.jobs()
        except (OSError, subprocess.SubprocessError):
            return
        for job_id, fields in current.items():
            self.jobs.setdefault(job_id, {}).update(fields)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def cluster_fixture(scratch: Path, **settings: object) -> Iterator[SlurmCluster]:
    """Generator body for a pytest fixture: yields a started cluster, tears it down afterwards.
    Skips (with the reason) when the cluster cannot start, or fails with the log tails where
    HNM_REQUIRE_CLUSTER=1, as CI sets it: there a skipped cluster test would hide a broken setup."""
    import pytest

    cluster = SlurmCluster(scratch, **settings)
    try:
        cluster.start()
    except ClusterUnavailable as error:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(
                f"SLURM test cluster did not start ({REQUIRE_ENV}=1): {error.reason}\n{error.logs}",
                pytrace=False,
            )
        pytest.skip(f"SLURM test cluster unavailable: {error.reason}")
    try:
        yield cluster
    finally:
        problems = cluster.stop()
        if problems:
            import warnings

            warnings.warn("SLURM test cluster teardown: " + "; ".join(problems), stacklevel=1)
