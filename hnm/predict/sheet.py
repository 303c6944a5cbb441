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
from hnm.io.sheet import RowChecker, _parse_mpp, read_table, separator_hint

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
                + separator_hint(list(table.columns), REQUIRED_COLUMNS)
            ],
        )
    if table.empty:
        raise SheetError(source, ["the sheet has no rows"])
    base = path.resolve().parent
    rows_checked = RowChecker(base, check_files)
    problems = rows_checked.problems
    rows = []
    for position, record in enumerate(table.to_dict("records")):
        slide_id, where, slide_path = rows_checked.check(record, position)
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
