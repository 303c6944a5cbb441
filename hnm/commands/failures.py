"""`hnm failures`: one table of every slide that tiling skipped, and why.

With on_slide_error: skip a cohort run finishes even when some slides are unreadable; this report is
where the user finds out which ones (slide_id, path, error), instead of digging through job logs.
"""

from __future__ import annotations

import argparse
import logging
import re

log = logging.getLogger("hnm.failures")

# Tiles files written before the skip path stored the bare reason still carry the fail-mode hint,
# which tells the reader of this report to do what was already done.
_SKIP_HINT = re.compile(
    r"[;,.]?\s*(or )?set on_slide_error: skip to exclude (it|such slides)", re.IGNORECASE
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiles", nargs="+", required=True, help="tiles HDF5 files of all slides")
    parser.add_argument("--out", required=True, help="TSV to write (slide_id, path, error)")


def run(args: argparse.Namespace) -> int:
    from hnm.core.atomic import write_text
    from hnm.core.errors import HnmError
    from hnm.io.h5io import read_tiles

    rows = []
    for tiles in args.tiles:
        try:
            _coords, attrs = read_tiles(tiles)
        except (OSError, KeyError) as error:
            raise HnmError(
                f"tiles file {tiles} cannot be read ({error}); rerun `hnm tile` for it"
            ) from error
        if bool(attrs.get("failed", False)):
            rows.append(
                [
                    str(attrs.get("slide_id", "")),
                    str(attrs.get("slide_path", "")),
                    _SKIP_HINT.sub("", str(attrs.get("error", ""))),
                ]
            )
    lines = ["slide_id\tpath\terror"]
    lines += ["\t".join(_clean(value) for value in row) for row in rows]
    write_text(args.out, "\n".join(lines) + "\n")
    if rows:
        log.warning(
            "%d of %d slides failed and are excluded: %s (see %s)",
            len(rows),
            len(args.tiles),
            ", ".join(row[0] for row in rows),
            args.out,
        )
    else:
        log.info("no failed slides among %d; wrote %s", len(args.tiles), args.out)
    return 0


def _clean(value: str) -> str:
    """One TSV cell: tabs and line breaks in reader messages would break the table."""
    return " ".join(value.split())
