"""Progress reporting: a redrawn bar on a terminal, plain periodic lines in a log file."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hnm.core.progress import CLEAR_LINE, Progress, clock, is_terminal


class FakeTerminal(io.StringIO):
    """What a stage's standard error is when run by hand in a terminal."""

    def isatty(self) -> bool:
        return True


class Timer:
    """A clock the test advances, so rates and intervals are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def file_logger(tmp_path: Path) -> Iterator[tuple[logging.Logger, Path]]:
    """A logger writing to a plain file, as a stage under Snakemake does (`> {log} 2>&1`)."""
    path = tmp_path / "job.log"
    logger = logging.getLogger(f"hnm.test.progress.{tmp_path.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    yield logger, path
    logger.removeHandler(handler)
    handler.close()


def test_bar_on_a_terminal_redraws_in_place_with_rate_and_eta(
    caplog: pytest.LogCaptureFixture,
) -> None:
    terminal, timer = FakeTerminal(), Timer()
    logger = logging.getLogger("hnm.test.progress.bar")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with Progress(100, "case_001", logger, stream=terminal, unit="patches", timer=timer) as bar:
            assert bar.bar
            for _ in range(4):
                timer.now += 1.0
                bar.update(25)
    out = terminal.getvalue()
    assert not caplog.records  # on a terminal the bar replaces the log lines
    draws = out.split(CLEAR_LINE)[1:]
    assert len(draws) == 4
    assert draws[1].startswith("case_001  50% |")
    assert "50/100 [0:02<0:02, 25.0 patches/s]" in draws[1]
    assert draws[-1].rstrip("\n").endswith("100/100 [0:04<0:00, 25.0 patches/s]")
    assert out.endswith("\n") and out.count("\n") == 1  # one line, ended once


def test_bar_redraws_at_most_ten_times_a_second() -> None:
    terminal, timer = FakeTerminal(), Timer()
    bar = Progress(1000, "x", logging.getLogger("hnm.test"), stream=terminal, timer=timer)
    for _ in range(999):
        timer.now += 0.001
        bar.update(1)
    assert 9 <= terminal.getvalue().count(CLEAR_LINE) <= 11


def test_log_file_gets_periodic_plain_lines_without_escape_codes(
    file_logger: tuple[logging.Logger, Path], tmp_path: Path
) -> None:
    logger, path = file_logger
    timer = Timer()
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a file, not a terminal
        with Progress(
            60,
            "fine-tuning epoch 3",
            logger,
            interval=10.0,
            stream=stderr,
            unit="steps",
            timer=timer,
        ) as progress:
            assert not progress.bar
            for _ in range(60):
                timer.now += 1.0  # one step per second: a line every 10 steps, and the last
                progress.update(1)
    assert (tmp_path / "stderr.txt").read_text() == ""  # nothing drawn on the stream itself
    text = path.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("INFO hnm.test.progress.")
    assert lines[0].endswith(
        ": fine-tuning epoch 3: 10/60 (17%), 1.0 steps/s, elapsed 0:10, ETA 0:50"
    )
    assert lines[-1].endswith("60/60 (100%), 1.0 steps/s, elapsed 1:00, ETA 0:00")


def test_auto_mode_follows_a_real_terminal_and_a_dumb_one(monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            monkeypatch.setenv("TERM", "xterm")
            assert is_terminal(tty)
            assert Progress(1, "x", logging.getLogger("hnm.test"), stream=tty).bar
            monkeypatch.setenv("TERM", "dumb")  # cannot redraw a line: plain lines instead
            assert not Progress(1, "x", logging.getLogger("hnm.test"), stream=tty).bar
    finally:
        os.close(leader)
        os.close(follower)
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)


def test_note_prints_above_the_bar(caplog: pytest.LogCaptureFixture) -> None:
    terminal, timer = FakeTerminal(), Timer()
    logger = logging.getLogger("hnm.test.progress.note")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with Progress(3, "MIL training", logger, stream=terminal, timer=timer) as bar:
            timer.now += 1.0
            bar.update(1)
            bar.note("epoch %d: loss %.2f", 0, 0.5)
    assert [r.getMessage() for r in caplog.records] == ["epoch 0: loss 0.50"]
    out = terminal.getvalue()
    # drawn, lifted (cleared) for the message, drawn again, ended by close()
    assert out.count(CLEAR_LINE) == 3 and out.endswith("\n")


def test_note_in_a_log_file_is_a_plain_log_line(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("hnm.test.progress.note_lines")
    with caplog.at_level(logging.INFO, logger=logger.name):
        Progress(3, "x", logger, stream=stream).note("epoch %d", 7)
    assert [r.getMessage() for r in caplog.records] == ["epoch 7"]
    assert stream.getvalue() == ""


def test_a_loop_that_stops_early_still_ends_the_bar_line() -> None:
    terminal = FakeTerminal()
    with pytest.raises(RuntimeError):
        with Progress(10, "x", logging.getLogger("hnm.test"), stream=terminal, mode="bar") as bar:
            bar.update(1)
            raise RuntimeError("decode failed")
    assert terminal.getvalue().endswith("\n")  # the traceback starts on its own line
    silent = FakeTerminal()
    Progress(10, "x", logging.getLogger("hnm.test"), stream=silent).close()
    assert silent.getvalue() == ""  # never drawn: nothing to end


def test_resumed_job_counts_rate_and_eta_from_where_it_started() -> None:
    timer = Timer()
    progress = Progress(
        350, "MIL training", logging.getLogger("hnm.test"), initial=200, mode="lines", timer=timer
    )
    timer.now += 10.0
    progress.update(10)
    assert progress.rate == pytest.approx(1.0)
    assert progress.left == pytest.approx(140.0)
    assert "210/350 (60%)" in progress.line()


@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_bar_fits_the_terminal(width: int) -> None:
    progress = Progress(
        12_345, "a-rather-long-slide-identifier", logging.getLogger("hnm.test"), mode="bar"
    )
    progress.done = 6_000
    assert len(progress.render(width)) <= width - 1


def test_clock() -> None:
    assert clock(0) == "0:00"
    assert clock(75.4) == "1:15"
    assert clock(3 * 3600 + 62) == "3:01:02"
    assert clock(float("inf")) == "?"
