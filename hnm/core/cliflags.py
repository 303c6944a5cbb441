"""Config section -> CLI flags, so rules pass settings to stages without listing each one by hand.

`{"batch_size": 256, "ranking_loss": False, "weights": ""}` becomes
`--batch-size 256 --no-ranking-loss --weights ''`: underscores become dashes, booleans become
argparse BooleanOptionalAction switches, values are shell-quoted.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any


def to_flags(settings: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    """The command-line flags of a config section, in one canonical order (keys sorted, mappings
    written with sorted keys): the same settings give the same command line whatever the order of
    the keys in the user's YAML, so Snakemake's params trigger re-runs a job only for a changed
    value, and a run's shared outputs stay valid for another run of the same settings."""
    skipped = set(skip)
    parts: list[str] = []
    for key, value in sorted(settings.items()):
        if key in skipped or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            parts.append(f"{flag} {shlex.quote(json.dumps(value, sort_keys=True))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


# The flags that belong to a job rather than to a config section, each declared here once with one
# meaning, so `--threads` means the same in every stage that takes it.
JOB_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "seed": ("--seed", {"type": int, "default": 0, "help": "the run's seed (config `seed`)"}),
    "device": (
        "--device",
        {"default": "auto", "help": "auto (CUDA where present), cpu, cuda or cuda:N"},
    ),
    "threads": (
        "--threads",
        {
            "type": int,
            "default": 0,
            "help": "the job's CPU thread budget (Snakemake's `threads`; 0: every core this "
            "process may run on); each stage sizes its own thread pools within it",
        },
    ),
    "checkpoint_dir": (
        "--checkpoint-dir",
        {
            "default": "",
            "help": "resumable state, outside the declared outputs (Snakemake deletes those of a "
            "failed job); empty: no checkpoints",
        },
    ),
}


def add_job_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the job-level flags `names` (keys of JOB_FLAGS) to a stage's parser."""
    group = parser.add_argument_group("job")
    for name in names:
        flag, options = JOB_FLAGS[name]
        group.add_argument(flag, **options)
