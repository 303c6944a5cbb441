"""The slide sheet: which slides, their labels and splits.

It is validated in full before any job starts (the Snakefile calls `validate_sheet` while it builds
the DAG), and every problem is reported at once with its row, because a cohort of hundreds of slides
should not fail one typo per run. Stages read the normalised copy the workflow writes
(results/sheet.tsv): absolute paths, integer labels, lower-case splits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hnm.core.errors import HnmError, SheetError

REQUIRED_COLUMNS = ("slide_id", "path", "label", "split")
OPTIONAL_COLUMNS = ("mpp", "annotation")
SPLITS = ("train", "val", "test")  # the sheet's split values; stages import them from here
# File-name safe and wildcard safe: no separators, spaces or leading dots.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_LABELS: dict[str, int] = {
    "0": 0,
    "1": 1,
    "normal": 0,
    "negative": 0,
    "tumor": 1,
    "tumour": 1,
    "positive": 1,
}


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A TSV or CSV (by extension; .txt and others are sniffed), every cell as text."""
    path = Path(path)
    if not path.exists():
        raise SheetError(str(path), ["the sheet file does not exist"])
    separator = {".tsv": "\t", ".csv": ","}.get(path.suffix.lower())
    try:
        table = pd.read_csv(
            path, sep=separator, engine="python", dtype=str, keep_default_na=False, comment=None
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SheetError(str(path), [f"cannot be parsed as TSV/CSV: {error}"]) from error
    table.columns = [str(column).strip() for column in table.columns]
    return table.apply(lambda column: column.str.strip())


def validate_sheet(
    path: str | os.PathLike[str],
    labels: Mapping[str, int] | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """Check every row and return the normalised sheet, or raise SheetError listing all problems."""
    path = Path(path)
    table = read_table(path)
    return normalise(table, str(path), path.resolve().parent, labels, check_files)


def normalise(
    table: pd.DataFrame,
    source: str,
    base: Path,
    labels: Mapping[str, int] | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    label_map = {str(k).lower(): int(v) for k, v in (labels or DEFAULT_LABELS).items()}
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise SheetError(
            source,
            [f"missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}"],
        )
    if table.empty:
        raise SheetError(source, ["the sheet has no rows"])
    problems: list[str] = []
    rows = []
    seen: dict[str, int] = {}
    for position, record in enumerate(table.to_dict("records")):
        line = position + 2  # the header is line 1
        where = f"row {line} (slide_id '{record['slide_id']}')"
        slide_id = record["slide_id"]
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
        label = label_map.get(record["label"].lower())
        if label is None:
            problems.append(
                f"{where}: label '{record['label']}' is not one of {sorted(label_map)}; "
                "set `labels` in the config to map other names"
            )
        split = record["split"].lower()
        if split not in SPLITS:
            problems.append(f"{where}: split '{record['split']}' is not one of {', '.join(SPLITS)}")
        mpp = _parse_mpp(record.get("mpp", ""), where, problems)
        annotation = record.get("annotation", "")
        annotation_path = _resolve(annotation, base) if annotation else None
        if annotation_path is not None and check_files and not annotation_path.is_file():
            problems.append(f"{where}: annotation file not found: {annotation_path}")
        rows.append(
            {
                "slide_id": slide_id,
                "path": str(slide_path),
                "label": label,
                "split": split,
                "mpp": mpp,
                "annotation": str(annotation_path) if annotation_path else "",
            }
        )
    sheet = pd.DataFrame(rows)
    train = sheet[sheet["split"] == "train"]
    if train.empty:
        problems.append("no slide has split 'train': the MIL model needs training slides")
    elif set(train["label"].dropna()) != {0, 1}:
        present = sorted(int(v) for v in set(train["label"].dropna()))
        problems.append(
            f"the train split has only label(s) {present}: it needs both normal (0) and tumor (1) "
            "slides"
        )
    if problems:
        raise SheetError(source, problems)
    sheet["label"] = sheet["label"].astype(int)
    return sheet


def _resolve(value: str, base: Path) -> Path:
    """Relative paths in a sheet are relative to the sheet's own folder, not the working directory."""
    candidate = Path(os.path.expanduser(value))
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _parse_mpp(value: str, where: str, problems: list[str]) -> float | None:
    if value in ("", None):
        return None
    try:
        mpp = float(value)
    except ValueError:
        problems.append(f"{where}: mpp '{value}' is not a number")
        return None
    if not mpp > 0:
        problems.append(f"{where}: mpp must be positive, got {value}")
        return None
    return mpp


def demo_sheet(
    counts: Mapping[str, Mapping[str, int]], slides_dir: str, annotations_dir: str
) -> pd.DataFrame:
    """The built-in demo cohort: ids, labels and splits from the config's counts per split/class.

    Its files do not exist yet: a rule synthesises each one, so files are not checked here.
    """
    rows = []
    for split in SPLITS:
        for class_name, label in (("tumor", 1), ("normal", 0)):
            for number in range(int(counts.get(split, {}).get(class_name, 0))):
                slide_id = f"demo_{split}_{class_name}_{number:02d}"
                rows.append(
                    {
                        "slide_id": slide_id,
                        "path": str(Path(slides_dir).resolve() / f"{slide_id}.tiff"),
                        "label": label,
                        "split": split,
                        "mpp": None,
                        "annotation": str(Path(annotations_dir).resolve() / f"{slide_id}.geojson"),
                    }
                )
    table = pd.DataFrame(rows).astype({"label": str})
    return normalise(table, "demo cohort (config: demo.slides)", Path.cwd(), check_files=False)


def write_normalised_sheet(sheet: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    from hnm.core.atomic import atomic_path

    with atomic_path(path) as temporary:
        sheet.to_csv(temporary, sep="\t", index=False, na_rep="")


def read_normalised_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The workflow's normalised sheet (results/sheet.tsv), as every stage reads it."""
    if not Path(path).exists():
        raise HnmError(f"slide sheet {path} does not exist; run the workflow's sheet step first")
    sheet = pd.read_csv(path, sep="\t", dtype={"slide_id": str, "path": str, "split": str},
                        keep_default_na=False)
    sheet["label"] = sheet["label"].astype(int)
    sheet["mpp"] = pd.to_numeric(sheet["mpp"], errors="coerce")
    sheet["annotation"] = sheet["annotation"].fillna("").astype(str)
    return sheet
