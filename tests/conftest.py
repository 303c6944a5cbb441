"""Shared fixtures: the small public slide files in tests/data/slides (see its README).

In CI (`CI` set) a skipped test fails the run unless it is a GPU test: a CPU test that skips in a
fresh clone hides a missing fixture or install step.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.workflow_runner import FinishedRun, jobs_run, run, write_config

REPO = Path(__file__).resolve().parents[1]
TEST_SLIDES = REPO / "tests" / "data" / "slides"


@pytest.fixture(scope="session")
def test_slides() -> Path:
    """The folder of real slide files shipped with the tests."""
    assert (TEST_SLIDES / "cmu-1-small-region.svs").exists(), (
        f"test slides missing in {TEST_SLIDES}"
    )
    return TEST_SLIDES


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One finished tiny run shared by the tests that read its outputs or add to them without
    touching the training results (predictions, the report): each run costs about 3 minutes on
    2 cores, and three modules need the same one."""
    folder = tmp_path_factory.mktemp("tiny_run")
    write_config(folder)
    return FinishedRun(folder, jobs_run(run(folder)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, fail the run when a test not marked `gpu` was skipped."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [r for r in reporter.stats.get("skipped", []) if "gpu" not in r.keywords]
    if skipped:
        names = ", ".join(r.nodeid for r in skipped)
        reporter.write_line(f"CI: {len(skipped)} non-GPU test(s) skipped: {names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
