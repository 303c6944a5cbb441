"""The workflow on a real single-node SLURM cluster (tests/cluster/slurm.py), through sbatch.

Each test runs snakemake with workflow/profiles/ci-slurm on a tiny demo cohort, in a copy of the
repository in a temporary folder (results never land in the real checkout). They check what only a
real scheduler shows: that every job went through sbatch, that the GPU stages asked for a GPU, that
the results equal a local run's with the same seed, and that a job cancelled by the scheduler is
redone on rerun without redoing what had finished.

snakemake is run as `timeout -s INT -k 30 <limit> python -m snakemake ...`: SIGINT makes it cancel
its SLURM jobs and exit, where SIGTERM would leave it waiting for them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests.cluster.slurm import (
    ETC_SLURM,
    REQUIRE_ENV,
    ClusterUnavailable,
    JobRecorder,
    SlurmCluster,
    client_env,
    cluster_fixture,
    pid_alive,
)

pytestmark = [pytest.mark.cluster, pytest.mark.workflow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[1]
COPIED = ("Snakefile", "rules", "envs", "workflow", "config", "hnm", ".test")
PROFILE = "workflow/profiles/ci-slurm"
# A cohort small enough for 2 cores: 6 slides of 1024 px, one hard-negative round, few epochs.
OVERRIDE = ".test/config/cluster.yaml"
# probe trains the MIL again at evaluate.mil_seeds (on by default), so it asks for a GPU too
GPU_RULES = {"pretrain", "extract", "mil", "finetune", "probe"}
RUN_LIMIT_S = 900  # per snakemake invocation; SIGINT then, SIGKILL 30 s later

# The furthest target that works end to end (see the report for the state of the stages).
TARGETS = ["all"]
# The cancel test stops at round 0's features (synth, tile, extract): enough to cancel a running
# extract job and see the other slides' features kept.
CANCEL_TARGETS = ["features_round0"]

SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")
SBATCH_CALL = re.compile(r"^sbatch call: (sbatch .*)$", re.MULTILINE)


# ----- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One cluster for the module: starting it takes seconds, but two would fight over
    /etc/slurm/slurm.conf."""
    yield from cluster_fixture(tmp_path_factory.mktemp("slurm"))


def make_copy(folder: Path) -> Path:
    """The workflow's files (not results, not .snakemake) in `folder`, the test configs included."""
    folder.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=ignore)
        else:
            shutil.copy2(source, folder / name)
    return folder


def job_env(cluster: SlurmCluster | None) -> dict[str, str]:
    """Every SLURM job runs `python -m snakemake` and the rules run `python -m hnm`; sbatch
    exports the submitting environment (--export=ALL), so this interpreter's bin folder must lead
    PATH, and VIRTUAL_ENV is set where it is a virtualenv."""
    env = client_env(cluster.conf if cluster else None)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env.pop("PYTHONPATH", None)  # the rules set their own; the copy must not import the repo
    return env


def snakemake_argv(*args: str, limit: int = RUN_LIMIT_S) -> list[str]:
    return [
        "timeout", "-s", "INT", "-k", "30", str(limit),
        sys.executable, "-m", "snakemake", f"--configfile={OVERRIDE}", *args,
    ]  # fmt: skip


def run_slurm(copy: Path, cluster: SlurmCluster, *targets: str, name: str) -> tuple[str, dict]:
    """snakemake through sbatch; returns (its output, the recorded SLURM jobs)."""
    argv = snakemake_argv("--workflow-profile", PROFILE, "--verbose", *targets)
    log = copy / f"{name}.log"
    with JobRecorder(cluster) as recorder, log.open("w") as out:
        result = subprocess.run(
            argv, cwd=copy, env=job_env(cluster), stdout=out, stderr=subprocess.STDOUT
        )
    text = log.read_text(errors="replace")
    if result.returncode != 0:
        pytest.fail(failure_report(copy, cluster, text, f"{name} exited {result.returncode}"))
    return text, recorder.jobs


def failure_report(copy: Path, cluster: SlurmCluster | None, text: str, what: str) -> str:
    """What a person needs to see when a run fails: the daemons' logs, the failed jobs' SLURM and
    rule logs, and last (where the eye lands) snakemake's own tail."""
    parts = [what]
    if cluster is not None:
        parts.append(cluster.log_tails(20))
    for log in sorted((copy / ".snakemake" / "slurm_logs").rglob("*.log"))[-6:]:
        content = log.read_text(errors="replace")
        if "Error" in content or "error" in content:
            parts += [f"--- {log.relative_to(copy)} ---", "\n".join(content.splitlines()[-25:])]
    for log in sorted((copy / "results" / "logs").rglob("*.log")):
        content = log.read_text(errors="replace")
        if "Error" in content or "Traceback" in content:
            parts += [f"--- {log.relative_to(copy)} ---", "\n".join(content.splitlines()[-25:])]
    parts += ["--- snakemake output (tail) ---", "\n".join(text.splitlines()[-60:])]
    return "\n".join(parts)


def planned_jobs(text: str) -> dict[str, int]:
    """The first 'Job stats' table snakemake prints: rule -> number of jobs it will run."""
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", text, re.DOTALL)
    assert match, "no 'Job stats' table in snakemake's output"
    counts = {}
    for line in match.group(1).splitlines():
        rule, count = line.split()
        counts[rule] = int(count)
    return counts


def rules_in(comment: str, known: set[str]) -> tuple[str | None, set[str]]:
    """(group, rules) of a SLURM job from the plugin's --comment: rule_<rule>[_wildcards_<values>]
    for one job, rule_<group>_<rule>[_<rule>...] (rules sorted) for a group job."""
    name = comment.removeprefix("rule_").split("_wildcards_")[0]
    if name in known:
        return None, {name}

    def split(rest: str) -> list[str] | None:
        if rest in known:
            return [rest]
        for rule in known:
            if rest.startswith(rule + "_"):
                tail = split(rest[len(rule) + 1 :])
                if tail is not None:
                    return [rule, *tail]
        return None

    parts = name.split("_")
    for cut in range(1, len(parts)):
        rules = split("_".join(parts[cut:]))
        if rules:
            return "_".join(parts[:cut]), set(rules)
    raise AssertionError(f"cannot tell the rule(s) of SLURM job comment {comment!r}")


def output_snapshot(copy: Path) -> dict[str, int]:
    """mtime (ns) of every result file a finished job left. Not logs, benchmarks (snakemake writes
    one for a job SLURM cancelled, too) or in-job checkpoints: a redone job rewrites those by
    design. Not the hidden temporaries of hnm.core.atomic either (see leftover_temporaries)."""
    results = copy / "results"
    skip = (results / "logs", results / "benchmarks", results / "checkpoints")
    return {
        str(path.relative_to(copy)): path.stat().st_mtime_ns
        for path in results.rglob("*")
        if path.is_file()
        and not path.name.startswith(".")
        and not any(path.is_relative_to(folder) for folder in skip)
    }


def leftover_temporaries(copy: Path) -> list[str]:
    """hnm.core.atomic's `.{stem}.tmp{pid}{suffix}` files: a job killed by SIGTERM/SIGKILL (scancel)
    never reaches the cleanup that removes them. Harmless to results (never taken for outputs)."""
    return sorted(
        str(path.relative_to(copy))
        for path in (copy / "results").rglob(".*.tmp*")
        if path.is_file() and not path.is_relative_to(copy / "results" / "checkpoints")
    )


def same_tensors(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_tensors(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return True  # plain values (paths, versions) may name the copy; tensors are what must match


def comparable_outputs(copy: Path) -> list[str]:
    """Outputs whose content must not depend on the executor: patch grids, the round-0 encoder,
    the last round's features, the final metrics (whichever the target produced)."""
    results = copy / "results"
    names = [p for p in sorted(results.glob("tiles/*.h5"))]
    names += [results / "r0" / "encoder.pt"]
    rounds = sorted(results.glob("r*/features"))
    if rounds:
        names += sorted(rounds[-1].glob("*.h5"))
    evals = sorted(results.glob("r*/eval/metrics.json"))
    names += evals[-1:]
    names += [results / "final" / "metrics.json", results / "final" / "rounds.csv"]
    return [str(p.relative_to(copy)) for p in names if p.exists()]


def assert_same_output(name: str, slurm_copy: Path, local_copy: Path) -> None:
    a, b = slurm_copy / name, local_copy / name
    assert b.exists(), f"{name}: made on SLURM but not locally"
    if name.endswith(".h5"):
        import h5py
        import numpy as np

        with h5py.File(a) as fa, h5py.File(b) as fb:
            assert set(fa) == set(fb), name
            for key in fa:
                np.testing.assert_array_equal(fa[key][()], fb[key][()], err_msg=f"{name}:{key}")
    elif name.endswith(".pt"):
        import torch

        sa = torch.load(a, map_location="cpu", weights_only=False)
        sb = torch.load(b, map_location="cpu", weights_only=False)
        assert same_tensors(sa, sb), f"{name}: tensors differ between SLURM and local runs"
    elif name.endswith(".json"):
        assert json.loads(a.read_text()) == json.loads(b.read_text()), name
    elif name.endswith(".csv"):
        import pandas as pd

        # Timings (extraction_seconds, ..._per_second) differ between any two runs.
        ta, tb = pd.read_csv(a), pd.read_csv(b)
        timing = [column for column in ta.columns if "second" in column]
        pd.testing.assert_frame_equal(ta.drop(columns=timing), tb.drop(columns=timing), obj=name)
    else:
        assert a.read_text().replace(str(slurm_copy), "<copy>") == b.read_text().replace(
            str(local_copy), "<copy>"
        ), name


# ----- tests -------------------------------------------------------------------------------------
def etc_slurm_state() -> dict[str, str]:
    """What /etc/slurm holds, symlink targets included, to compare before and after a cluster."""
    if not ETC_SLURM.exists():
        return {}
    return {
        path.name: f"-> {os.readlink(path)}" if path.is_symlink() else "file"
        for path in ETC_SLURM.iterdir()
    }


def test_a_cluster_that_cannot_start_is_reported_and_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs before the module's cluster exists (they would share /etc/slurm). A node line claiming
    far more memory than the machine has makes slurmd refuse the node: start() must raise with the
    reason and the daemons' logs, stop every daemon it started and leave /etc/slurm as it was; the
    fixture helper must skip, or fail under HNM_REQUIRE_CLUSTER=1."""
    before = etc_slurm_state()
    cluster = SlurmCluster(tmp_path / "bad", real_memory_mb=10**8, start_timeout=30)
    try:
        cluster.start()
    except ClusterUnavailable as error:
        caught = error
    else:
        cluster.stop()
        pytest.fail("a node declaring 100 TB of memory was accepted")
    if "not installed" in caught.reason or "as root" in caught.reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(caught.reason)
        pytest.skip(caught.reason)
    assert "node localhost is inval" in caught.reason, caught.reason
    assert "slurmctld.log" in caught.logs and "slurmd.log" in caught.logs, caught.logs
    assert set(cluster.daemon_pids) == {"slurmctld", "slurmd"}, cluster.daemon_pids
    for name, pid in cluster.daemon_pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still runs after a failed start"
    assert etc_slurm_state() == before

    settings = {"real_memory_mb": 10**8, "start_timeout": 30}
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="node localhost is inval"):
        next(cluster_fixture(tmp_path / "skip", **settings))
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"(?s)HNM_REQUIRE_CLUSTER=1.*slurmd\.log"):
        next(cluster_fixture(tmp_path / "fail", **settings))
    assert etc_slurm_state() == before


def test_workflow_runs_through_sbatch_and_matches_a_local_run(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # The local run goes alongside: SLURM jobs spend much of their time waiting for the plugin's
    # status checks, so the 2 cores have room for it.
    local = make_copy(tmp_path / "local")
    local_log = (local / "local-run.log").open("w")
    local_started = time.monotonic()
    local_run = subprocess.Popen(
        snakemake_argv("--cores", "2", *TARGETS),
        cwd=local, env=job_env(None), stdout=local_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    local_seconds: list[float] = []
    waiter = threading.Thread(
        target=lambda: (local_run.wait(), local_seconds.append(time.monotonic() - local_started)),
        daemon=True,
    )
    waiter.start()
    try:
        copy = make_copy(tmp_path / "slurm")
        started = time.monotonic()
        text, jobs = run_slurm(copy, slurm_cluster, *TARGETS, name="slurm-run")
        slurm_seconds = time.monotonic() - started
        waiter.join(timeout=RUN_LIMIT_S + 60)
    finally:
        if local_run.poll() is None:
            local_run.kill()
        local_log.close()

    # Every job snakemake planned (bar the target-only rule `all`) went through sbatch, and SLURM
    # ran each to completion.
    submitted = dict(SUBMITTED.findall(text))  # snakemake job id -> SLURM job id
    assert submitted, "no 'submitted with SLURM jobid' line: did the jobs run locally?"
    slurm_ids = set(submitted.values())
    assert slurm_ids <= set(jobs), f"SLURM never listed jobs {sorted(slurm_ids - set(jobs))}"
    states = {i: jobs[i]["JobState"] for i in slurm_ids}
    assert set(states.values()) == {"COMPLETED"}, states
    plan = planned_jobs(text)
    known = set(plan)
    units = {i: rules_in(jobs[i]["Comment"], known) for i in slurm_ids}  # id -> (group, rules)
    ran_rules = set().union(*(rules for _group, rules in units.values()))
    # `all` only names targets: it runs no job. file_list is a local rule: it writes a text
    # file in Snakemake's own process, never through sbatch.
    planned_rules = known - {"all", "file_list"}
    assert planned_rules <= ran_rules, f"never submitted: {planned_rules - ran_rules}"
    assert "file_list" in known and "file_list" not in ran_rules
    assert ("per_slide", {"tile"}) in units.values(), f"tile jobs were not grouped: {units}"

    # GPU stages asked SLURM for a GPU (sbatch --gpus=1, seen by slurmctld as gres:gpu:1); the
    # others did not.
    calls = SBATCH_CALL.findall(text)
    assert len(calls) == len(slurm_ids), "one logged sbatch call per submitted job"
    for call in calls:
        _group, rules = rules_in(re.search(r"--comment (\S+)", call).group(1), known)
        options = call.split("--wrap=")[0]
        assert "--gpus=" not in options.replace("--gpus=1", ""), f"{rules}: {options}"
        assert ("--gpus=1" in options) == bool(rules & GPU_RULES), f"{rules}: {options}"
    for job_id, (_group, rules) in units.items():
        tres = jobs[job_id].get("TresPerJob", "")
        assert (tres == "gres:gpu:1") == bool(rules & GPU_RULES), f"job {job_id} {rules}: {tres!r}"
    assert GPU_RULES & set(plan) <= ran_rules, "GPU rules planned but not submitted"

    # Same seed, same results as the local run.
    local_text = (local / "local-run.log").read_text(errors="replace")
    assert local_seconds, "the local run did not finish in time"
    assert local_run.returncode == 0, failure_report(local, None, local_text, "local run failed")
    compared = comparable_outputs(copy)
    assert compared, "the target made none of the outputs this test compares"
    for name in compared:
        assert_same_output(name, copy, local)
    print(
        f"SLURM run {slurm_seconds:.0f} s ({len(slurm_ids)} SLURM jobs), local run "
        f"{local_seconds[0]:.0f} s (alongside); {len(compared)} outputs identical"
    )


def test_cancelled_job_is_redone_on_rerun_and_finished_work_is_kept(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    copy = make_copy(tmp_path / "cancel")
    argv = snakemake_argv("--workflow-profile", PROFILE, "--verbose", *CANCEL_TARGETS)
    log = copy / "cancelled-run.log"
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, cwd=copy, env=job_env(slurm_cluster), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            cancelled = cancel_running_extract(slurm_cluster, copy, process)
            process.wait(timeout=RUN_LIMIT_S + 60)
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text(errors="replace")
    assert process.returncode != 0, "snakemake should fail once SLURM cancelled one of its jobs"
    # A single job's failure names its SLURM state; a group job's names the group and its SLURM log.
    reported = rf"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'|/{cancelled}\.log"
    assert re.search(reported, text), failure_report(
        copy, slurm_cluster, text, f"job {cancelled} not reported as failed"
    )
    finished = output_snapshot(copy)
    features = [name for name in finished if name.startswith("results/r0/features/")]
    assert any(name.startswith("results/tiles/") for name in finished), "no tiles before the cancel"

    rerun_text, jobs = run_slurm(
        copy, slurm_cluster, "--rerun-incomplete", *CANCEL_TARGETS, name="rerun"
    )
    changed = {
        name: "gone" if not (copy / name).exists() else "rewritten"
        for name, mtime in finished.items()
        if not (copy / name).exists() or (copy / name).stat().st_mtime_ns != mtime
    }
    assert not changed, f"the rerun touched outputs finished before the cancel: {changed}"
    rerun_ids = set(dict(SUBMITTED.findall(rerun_text)).values())
    known = set(planned_jobs(rerun_text))
    rerun_rules = set().union(*(rules_in(jobs[i]["Comment"], known)[1] for i in rerun_ids))
    assert rerun_rules == {"extract"}, f"the rerun should only redo extraction: {rerun_rules}"
    redone = planned_jobs(rerun_text)["extract"]
    assert redone == len(slide_ids(copy)) - len(features), "one extract job per missing slide"
    dry = subprocess.run(
        snakemake_argv("-n", "--workflow-profile", PROFILE, *CANCEL_TARGETS),
        cwd=copy, env=job_env(slurm_cluster), capture_output=True, text=True,
    )  # fmt: skip
    assert "Nothing to be done" in dry.stdout + dry.stderr, "the rerun left work undone"
    litter = leftover_temporaries(copy)
    if litter:
        warnings.warn(
            f"scancel left temporary files of hnm.core.atomic behind: {litter}", stacklevel=1
        )
    print(
        f"cancelled SLURM job {cancelled} (extract); kept {len(finished)} finished outputs "
        f"({len(features)} feature files); rerun submitted {len(rerun_ids)} jobs; "
        f"{time.monotonic() - started:.0f} s in all"
    )


def slide_ids(copy: Path) -> list[str]:
    return [path.stem for path in (copy / "results" / "tiles").glob("*.h5")]


def cancel_running_extract(
    cluster: SlurmCluster, copy: Path, process: subprocess.Popen, timeout: float = RUN_LIMIT_S
) -> str:
    """Once one slide's features exist and a job with extract jobs in it (one slide's, or a group's)
    runs, scancel that job and return its id. A job may end on its own before the cancel lands:
    then try the next one."""
    features = copy / "results" / "r0" / "features"
    log = copy / "cancelled-run.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"snakemake ended (exit {process.returncode}) before an extract job could be "
                f"cancelled:\n" + log.read_text()[-3000:]
            )
        if features.is_dir() and any(features.glob("demo*.h5")):
            known = set(planned_jobs(log.read_text(errors="replace")))
            for job_id, fields in cluster.jobs().items():
                if fields.get("JobState") != "RUNNING":
                    continue
                if "extract" not in rules_in(fields.get("Comment", ""), known)[1]:
                    continue
                cluster.run("scancel", job_id)
                state = ""
                for _ in range(100):
                    state = cluster.jobs().get(job_id, {}).get("JobState", "")
                    if state in ("CANCELLED", "COMPLETED", "FAILED"):
                        break
                    time.sleep(0.1)
                if state == "CANCELLED":
                    return job_id
        time.sleep(0.5)
    pytest.fail("no extract job ran after another had finished, within the time limit")
