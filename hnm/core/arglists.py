"""File lists that stand in for long runs of paths on a job's command line.

Snakemake runs a job's shell command as one argument to bash (`bash -c COMMAND`), and Linux caps a
single argument at 128 KiB (MAX_ARG_STRLEN): past that the job fails with "Argument list too long"
before it starts. A stage that takes one file per slide (tiles, features, heatmaps) reaches the cap
at a few thousand slides, so the workflow writes such lists to a file, one path per line, and the
command names it as `@FILE`, which every stage's parser expands in place (argparse's
`fromfile_prefix_chars`, set in hnm.cli). The stage sees the same paths either way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from hnm.core.atomic import write_text
from hnm.core.errors import HnmError

# What a stage's parser takes as "read the arguments from this file".
PREFIX = "@"
# Linux's MAX_ARG_STRLEN: the longest single argument, so the longest shell command of one job.
ARGUMENT_LIMIT = 128 * 1024


def list_text(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One path per line. A path that argparse would misread is refused here, naming it: one with
    a line break (it would become two arguments) or one that starts with `@` (argparse would read
    it as another list)."""
    lines = []
    for path in map(str, paths):
        if "\n" in path or "\r" in path:
            raise HnmError(f"path {path!r} contains a line break; rename the file")
        if path.startswith(PREFIX):
            raise HnmError(
                f"path {path!r} starts with '{PREFIX}', which hnm's stages read as a list of "
                "arguments; give it as ./" + path + " or rename it"
            )
        lines.append(path + "\n")
    return "".join(lines)


def list_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """The list's SHA-256: the list rule's parameter, so that a changed list is rewritten while
    Snakemake's metadata holds a short string, not thousands of paths."""
    return hashlib.sha256(list_text(paths).encode("utf-8")).hexdigest()


def write_list(path: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> None:
    """Write the list atomically (a reader never sees half of it)."""
    write_text(path, list_text(paths))
