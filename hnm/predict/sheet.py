"""The sheet of new slides to predict: slide_id, path and optionally mpp, with no label or split.

Checked with the training sheet's own rules (hnm.io.sheet: ids that name files, paths relative to
the sheet, plausible mpp, one row per slide file), every problem at once, while the DAG is built.
The normalised copy (results/predict/<name>/sheet.tsv) has the training sheet's columns, so the
viz stages read it as they read that one: split NEW_SPLIT, a blank label (read as unknown), no
annotation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from hnm.core.errors import SheetError
from hnm.io.sheet import (
    SAFE_ID,
    _check_same_file,
    _parse_mpp,
    _resolve,
    read_table,
)

REQUIRED_COLUMNS = ("slide_id", "path")
NEW_SPLIT = "new"  # the split value of every predicted slide in the normalised copy
IGNORED_COLUMNS = ("label", "split", "annotation")  # a training sheet's rows may be reused as is


def validate_new_slides(path: str | os.PathLike[str], check_files: bool = True) -> pd.DataFrame:
    """The normalised sheet of new slides, or SheetError listing every problem with its row."""
    path = Path(path)
    table = read_table(path)
    source = f"{path} (predict.sheet)"
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise SheetError(
            source,
            [
                f"missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}"
                " (optional: mpp), tab-separated in a .tsv or comma-separated in a .csv; found "
                f"column(s) {', '.join(map(repr, table.columns))}"
            ],
        )
    if table.empty:
        raise SheetError(source, ["the sheet has no rows"])
    base = path.resolve().parent
    problems: list[str] = []
    rows = []
    seen: dict[str, int] = {}
    seen_files: dict[tuple[int, int], str] = {}
    for position, record in enumerate(table.to_dict("records")):
        line = position + 2  # the header is line 1
        slide_id = record["slide_id"]
        where = f"row {line} (slide_id '{slide_id}')"
        if not SAFE_ID.match(slide_id):
            problems.append(
                f"{where}: slide_id must be 1-128 letters, digits, '.', '_' or '-' and start with a "
                "letter or digit (no path separators or spaces), since it names output files"
            )
        elif slide_id in seen:
            problems.append(f"{where}: duplicate slide_id, first used in row {seen[slide_id]}")
        else:
            seen[slide_id] = line
        slide_path = _resolve(record["path"], base)
        if not record["path"]:
            problems.append(f"{where}: empty path")
        elif check_files and not slide_path.is_file():
            problems.append(f"{where}: slide file not found: {slide_path}")
        elif check_files:
            _check_same_file(slide_path, where, seen_files, problems)
        rows.append(
            {
                "slide_id": slide_id,
                "path": str(slide_path),
                "label": None,
                "split": NEW_SPLIT,
                "mpp": _parse_mpp(record.get("mpp", ""), where, problems),
                "annotation": "",
            }
        )
    if problems:
        raise SheetError(source, problems)
    return pd.DataFrame(rows)
