"""Errors a user can act on.

The CLI prints these as one clear message (no traceback) and exits with status 2, so a failed
Snakemake job's log says what went wrong and what to do, not where in our code it happened.
"""

from __future__ import annotations


class HnmError(Exception):
    """An error caused by input or settings that the user can fix."""


class ConfigError(HnmError):
    """A setting is missing, out of range or inconsistent with another."""


class SlideError(HnmError):
    """A single slide cannot be used; names the slide so a cohort run can skip just that one."""

    def __init__(self, slide_id: str, path: str, problem: str, hint: str | None = None) -> None:
        self.slide_id = slide_id
        self.path = path
        self.problem = problem
        self.hint = hint
        message = f"slide '{slide_id}' ({path}): {problem}"
        if hint:
            message += f". {hint[:1].upper()}{hint[1:]}"
        super().__init__(message)


class SheetError(HnmError):
    """The slide sheet has one or more bad rows; every problem is listed at once."""

    def __init__(self, sheet: str, problems: list[str]) -> None:
        self.sheet = sheet
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"slide sheet {sheet} has {len(self.problems)} problem(s); nothing was run:\n{lines}"
        )


class CheckpointError(HnmError):
    """A checkpoint or model file is missing, truncated or does not match what is asked of it."""


class DiskFullError(HnmError):
    """A write failed for lack of space; says where, how much is free, and how to go on."""


class CheckpointBusyError(CheckpointError):
    """Another running job holds a checkpoint folder: two writers would corrupt its state."""
