"""Progress of long loops: a live bar on a terminal, periodic plain lines in a log file.

People running a stage by hand expect a bar that redraws in place with rate and time left. Under
Snakemake each job's output goes to a log file, where such a bar would leave carriage returns and
escape codes, one redraw per batch; there a plain line every `interval` seconds with the count, the
rate and the time left reads well, and `tail -f` shows it. The mode follows the stream the stage
logs to (standard error, hnm.cli): a terminal gets the bar, anything else the lines.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, TextIO

Mode = Literal["auto", "bar", "lines"]

BAR_REDRAW_S = 0.1  # redrawing faster than the eye reads only costs time in a tight loop
CLEAR_LINE = "\r\x1b[K"  # back to column 0, erase to the end of the line


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal that understands a redrawn line."""
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
    return bool(interactive) and os.environ.get("TERM") != "dumb"


def clock(seconds: float) -> str:
    """`m:ss` or `h:mm:ss`; `?` when unknown (no rate yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts `done` of `total` items and reports it as a bar (terminal) or log lines (files).

    Lines mode logs `what: done/total (pct), rate/s, elapsed, ETA` at most once per `interval`
    seconds and always when the count reaches `total`. Bar mode redraws one line on `stream` and
    ends it with a newline when complete or on `close()`; messages meant to appear while a bar is
    shown go through `note()`, which lifts the bar out of the way. `initial` is the count a resumed
    job starts from: the rate and the time left count only what this process did.
    """

    def __init__(
        self,
        total: int,
        what: str,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        initial: int = 0,
        unit: str = "",
        stream: TextIO | None = None,
        mode: Mode = "auto",
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total = total
        self.what = what
        self.logger = logger
        self.interval = interval
        self.initial = initial
        self.done = initial
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.bar = mode == "bar" or (mode == "auto" and is_terminal(self.stream))
        self._timer = timer
        self.started = timer()
        # A bar appears with the first item; log lines wait for the first interval.
        self._last = -math.inf if self.bar else self.started
        self._drawn = False
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        """Add `count` finished items; report when due."""
        self.done += count
        now = self._timer()
        finished = self.done >= self.total
        if self.bar:
            if finished or now - self._last >= BAR_REDRAW_S:
                self._last = now
                self._draw()
            if finished:
                self.close()
        elif finished or now - self._last >= self.interval:
            self._last = now
            self.logger.info(self.line())

    def note(self, message: str, *args: object) -> None:
        """Log `message` at INFO; on a terminal above the bar rather than through it."""
        if self.bar and self._drawn and not self._closed:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self.logger.info(message, *args)
            self._draw()
        else:
            self.logger.info(message, *args)

    def close(self) -> None:
        """End the bar's line (a loop that stopped early, or an error, leaves it unfinished)."""
        if self.bar and self._drawn and not self._closed:
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    @property
    def elapsed(self) -> float:
        return self._timer() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    @property
    def left(self) -> float:
        """Seconds to go at the rate so far; infinite before the first item."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else math.inf

    def _percent(self) -> str:
        return f"{100 * self.done / self.total:.0f}%" if self.total > 0 else "?%"

    def line(self) -> str:
        """The plain log line: count, share, rate, elapsed time and time left."""
        return (
            f"{self.what}: {self.done}/{self.total} ({self._percent()}), "
            f"{self.rate:.1f} {self.unit or 'items'}/s, elapsed {clock(self.elapsed)}, "
            f"ETA {clock(self.left)}"
        )

    def render(self, width: int) -> str:
        """The bar line, fitted to `width` columns (the bar shrinks first, then the label)."""
        rate = f"{self.rate:.1f}{' ' + self.unit if self.unit else ''}/s"
        stats = f" {self.done}/{self.total} [{clock(self.elapsed)}<{clock(self.left)}, {rate}]"
        label = f"{self.what} {self._percent():>4} "
        room = width - 1 - len(label) - len(stats) - 2  # -1: never touch the last column
        if room < 10:
            label = label[: max(0, width - 1 - len(stats) - 12)]
            room = 10
        filled = min(room, room * self.done // self.total) if self.total > 0 else 0
        return f"{label}|{'#' * filled}{'.' * (room - filled)}|{stats}"[: max(1, width - 1)]

    def _draw(self) -> None:
        width = shutil.get_terminal_size(fallback=(80, 24)).columns
        self.stream.write(CLEAR_LINE + self.render(width))
        self.stream.flush()
        self._drawn = True
