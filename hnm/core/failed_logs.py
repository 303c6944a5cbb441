"""The cause of a failed job on the console, not only in its log file.

Snakemake ends a failed run with "Error in rule tile: ... log: results/logs/tile/x.log (check log
file(s) for error details)": the line that says what is wrong (hnm's one-line `hnm <stage>:
error: ...`, or a traceback's last lines) stays in the file. The Snakefile's onerror handler
passes Snakemake's own log here; every failed job's log is read and its telling lines are printed
under the job's name, so a newcomer never has to open a log to learn that a slide lacks its
resolution. Under `--quiet all` Snakemake writes no log of its own; then the job logs written
since the run started that hold an hnm error line or a traceback are the failed ones.
"""

from __future__ import annotations

import re
from pathlib import Path

ERROR_BLOCK = re.compile(r"^Error in (?:rule|group job) ([\w-]+)")
LOG_LINE = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$")
HNM_ERROR = re.compile(r"^hnm [\w-]+: error: ")
TAIL = 6


def failed_job_logs(snakemake_log: str) -> list[tuple[str, list[Path]]]:
    """(rule, log files) of every "Error in rule" block of a Snakemake log, in order, once each."""
    found: list[tuple[str, list[Path]]] = []
    seen: set[tuple[str, ...]] = set()
    rule = None
    for line in snakemake_log.splitlines():
        block = ERROR_BLOCK.match(line)
        if block:
            rule = block.group(1)
            continue
        if rule is None:
            continue
        match = LOG_LINE.match(line)
        if match:
            paths = [Path(p.strip()) for p in match.group(1).split(",") if p.strip()]
            key = tuple(map(str, paths))
            if key not in seen:
                seen.add(key)
                found.append((rule, paths))
            rule = None
        elif line and not line[0].isspace():
            rule = None  # the block ended without a log line
    return found


def telling_lines(text: str) -> list[str]:
    """hnm's own error lines where there are any, else the last lines (a traceback's end)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if HNM_ERROR.match(line)]
    return errors or lines[-TAIL:]


def recent_failed_logs(folder: Path, since: float) -> list[tuple[str, list[Path]]]:
    """Job logs under `folder` written after `since` (a time.time()) that hold an hnm error line
    or a traceback, as (log name, [path]) in the order they were written."""
    found = []
    for path in folder.rglob("*.log") if folder.is_dir() else []:
        try:
            written = path.stat().st_mtime
            if written < since:
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if any(HNM_ERROR.match(line) for line in text.splitlines()) or "Traceback" in text:
            found.append((written, path))
    return [(path.stem, [path]) for _, path in sorted(found)]


def failure_summary(
    snakemake_logs: str | Path | list[str | Path] | None,
    workdir: Path = Path("."),
    since: float | None = None,
) -> str:
    """The lines to print when a run failed; empty when no failed job's log says anything.
    `snakemake_logs` is the onerror handler's `log` (a path, or a list of them in Snakemake 9);
    `since`, the run's start, lets job logs speak when Snakemake's own log is empty."""
    paths = snakemake_logs if isinstance(snakemake_logs, list) else [snakemake_logs]
    text = ""
    for path in paths:
        try:
            text += Path(path).read_text(errors="replace") if path else ""
        except OSError:
            continue
    failed = failed_job_logs(text)
    if not failed and since is not None:
        failed = recent_failed_logs(workdir / "results" / "logs", since)
    parts = []
    for rule, paths in failed:
        for path in paths:
            try:
                lines = telling_lines((workdir / path).read_text(errors="replace"))
            except OSError:
                continue
            if lines:
                parts.append(f"{rule} failed ({path}):\n" + "\n".join(f"    {x}" for x in lines))
    if not parts:
        return ""
    return "Why the run stopped (from the failed jobs' logs):\n" + "\n".join(parts)
