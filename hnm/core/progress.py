"""Progress lines for logs.

Snakemake sends each job's output to a log file, where a carriage-return progress bar turns into
noise; a line every few seconds with count, rate and ETA reads well both there and in a terminal.
"""

from __future__ import annotations

import logging
import time


class Progress:
    """Logs `done/total`, items per second and time left, at most once per `interval` seconds."""

    def __init__(
        self, total: int, what: str, logger: logging.Logger, interval: float = 10.0
    ) -> None:
        self.total = total
        self.what = what
        self.logger = logger
        self.interval = interval
        self.done = 0
        self.started = time.perf_counter()
        self._last = self.started

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last >= self.interval or self.done >= self.total:
            self._last = now
            self.logger.info(self.line())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s, "
            f"{self.elapsed:.1f} s elapsed, {left:.0f} s left)"
        )
