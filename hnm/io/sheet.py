"""The slide sheet: which slides, their labels and splits.

It is validated in full before any job starts (the Snakefile calls `validate_sheet` while it builds
the DAG), and every problem is reported at once with its row, because a cohort of hundreds of slides
should not fail one typo per run. Stages read the normalised copy the workflow writes
(results/sheet.tsv): absolute paths, integer labels, lower-case splits.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from hnm.core.errors import HnmError, SheetError

log = logging.getLogger(__name__)

# Level-0 (width, height) of a slide file, or None when it cannot be read.
SlideDimensions = Callable[[Path], "tuple[int, int] | None"]

REQUIRED_COLUMNS = ("slide_id", "path", "label", "split")
OPTIONAL_COLUMNS = ("mpp", "annotation")
SPLITS = ("train", "val", "test")  # the sheet's split values; stages import them from here
# The same range as hnm.io.slide.PLAUSIBLE_MPP (not imported: that module loads openslide).
PLAUSIBLE_MPP = (0.05, 50.0)
# File-name safe and wildcard safe: no separators, spaces or leading dots.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SAVE_AS_TEXT = "save it as UTF-8 TSV (tab-separated) or CSV (in Excel: Save As, 'CSV UTF-8')"
# Zip (xlsx, ods) and OLE2 (xls) containers: spreadsheets saved in their own format.
_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")
_WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
_OTHER_SEPARATORS = {";": "semicolons", "|": "'|'", "\t": "tabs", ",": "commas"}
# Why the val and test splits need both classes, and what a run without them would lose.
_EVAL_SPLITS = {
    "val": "the decision threshold and the MIL model are chosen on it (with one class the "
    "threshold silently stays 0.5)",
    "test": "the reported slide AUC needs both (with one class it is blank)",
}
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
    _refuse_workbook(path)
    separator = {".tsv": "\t", ".csv": ","}.get(path.suffix.lower())
    try:
        table = pd.read_csv(
            path,
            sep=separator,
            engine="python",
            dtype=str,
            keep_default_na=False,
            comment=None,
            encoding="utf-8-sig",  # Excel's "CSV UTF-8" starts with a byte-order mark
        )
    except UnicodeDecodeError as error:
        raise SheetError(
            str(path),
            [
                f"the file is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                f"{error.start}; Latin-1, Windows-1252 and UTF-16 files look like this): "
                f"{SAVE_AS_TEXT}"
            ],
        ) from error
    except pd.errors.ParserError as error:
        raise SheetError(
            str(path), [f"cannot be parsed as TSV/CSV ({error}); {SAVE_AS_TEXT}"]
        ) from error
    table.columns = [str(column).strip() for column in table.columns]
    return table.apply(lambda column: column.str.strip())


def _refuse_workbook(path: Path) -> None:
    """A spreadsheet in its own format would parse as gibberish columns; say how to save it."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.suffix.lower() in _WORKBOOK_SUFFIXES or head.startswith(_WORKBOOK_MAGIC):
        raise SheetError(
            str(path), [f"the file is a spreadsheet workbook, not a text table: {SAVE_AS_TEXT}"]
        )


def validate_sheet(
    path: str | os.PathLike[str],
    labels: Mapping[str, int] | None = None,
    check_files: bool = True,
    annotation_classes: list[str] | None = None,
    allow_one_class_eval_splits: bool = False,
    slide_dimensions: SlideDimensions | None = None,
) -> pd.DataFrame:
    """Check every row and return the normalised sheet, or raise SheetError listing all problems.

    `annotation_classes` are the class names annotation files may use (default: Tumor only);
    `allow_one_class_eval_splits` turns a val or test split without both classes from an error
    into a warning; `slide_dimensions` (hnm.io.slide.level0_dimensions), when given, lets
    annotation coordinates be checked against the slide. It is passed in rather than imported so
    that the stages that only read sheets do not need a slide reader.
    """
    path = Path(path)
    table = read_table(path)
    return normalise(
        table,
        str(path),
        path.resolve().parent,
        labels,
        check_files,
        annotation_classes,
        allow_one_class_eval_splits,
        slide_dimensions,
    )


def normalise(
    table: pd.DataFrame,
    source: str,
    base: Path,
    labels: Mapping[str, int] | None = None,
    check_files: bool = True,
    annotation_classes: list[str] | None = None,
    allow_one_class_eval_splits: bool = False,
    slide_dimensions: SlideDimensions | None = None,
) -> pd.DataFrame:
    label_map = {str(k).lower(): int(v) for k, v in (labels or DEFAULT_LABELS).items()}
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise SheetError(
            source,
            [
                f"missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}"
                + separator_hint(list(table.columns), REQUIRED_COLUMNS)
            ],
        )
    if table.empty:
        raise SheetError(source, ["the sheet has no rows"])
    rows_checked = RowChecker(base, check_files)
    problems = rows_checked.problems
    rows = []
    for position, record in enumerate(table.to_dict("records")):
        slide_id, where, slide_path = rows_checked.check(record, position)
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
        elif annotation_path is not None and check_files:
            problems.extend(
                _annotation_problems(
                    annotation_path, slide_path, annotation_classes, slide_dimensions, where
                )
            )
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
    problems.extend(_eval_split_problems(sheet, allow_one_class_eval_splits))
    if problems:
        raise SheetError(source, problems)
    sheet["label"] = sheet["label"].astype(int)
    return sheet


def separator_hint(columns: list[str], required: Sequence[str]) -> str:
    """When the header holds the `required` names joined by another separator, name it (a sheet
    saved with the separator the other extension uses reads as one column)."""
    for separator, name in _OTHER_SEPARATORS.items():
        names = {part.strip() for column in columns for part in str(column).split(separator)}
        if len(names) > len(columns) and set(required) <= names:
            return (
                f". The header looks separated by {name}, which this file's extension does not "
                "use: save the sheet tab-separated as .tsv or comma-separated as .csv"
            )
    return ""


class RowChecker:
    """The checks every sheet row gets (training sheets and sheets of new slides): a safe, unique
    slide_id and a path to an existing file not listed under another id. It remembers the ids and
    files seen so far; problems are appended to `problems`."""

    def __init__(self, base: Path, check_files: bool) -> None:
        self.base = base
        self.check_files = check_files
        self.problems: list[str] = []
        self.seen: dict[str, int] = {}
        self.seen_files: dict[tuple[int, int], str] = {}

    def check(self, record: dict[str, str], position: int) -> tuple[str, str, Path]:
        """(slide_id, the row's name in messages, the resolved path) of the row at `position`."""
        line = position + 2  # the header is line 1
        slide_id = record["slide_id"]
        where = f"row {line} (slide_id '{slide_id}')"
        if not SAFE_ID.match(slide_id):
            self.problems.append(
                f"{where}: slide_id must be 1-128 letters, digits, '.', '_' or '-' and start with "
                "a letter or digit (no path separators or spaces), since it names output files"
            )
        elif slide_id in self.seen:
            self.problems.append(
                f"{where}: duplicate slide_id, first used in row {self.seen[slide_id]}"
            )
        else:
            self.seen[slide_id] = line
        slide_path = _resolve(record["path"], self.base)
        if not record["path"]:
            self.problems.append(f"{where}: empty path")
        elif self.check_files and not slide_path.is_file():
            self.problems.append(f"{where}: slide file not found: {slide_path}")
        elif self.check_files:
            _check_same_file(slide_path, where, self.seen_files, self.problems)
        return slide_id, where, slide_path


def _check_same_file(
    slide_path: Path, where: str, seen_files: dict[tuple[int, int], str], problems: list[str]
) -> None:
    """One slide file under two ids (by a link or another spelling of its path) is refused.

    It would count twice in training, or sit in train and test at once (leakage); comparing
    device and inode catches symlinks, hard links and '..' spellings alike.
    """
    status = slide_path.stat()
    key = (status.st_dev, status.st_ino)
    if key in seen_files:
        problems.append(
            f"{where}: the slide file {os.path.realpath(slide_path)} is the same file as "
            f"{seen_files[key]}; one slide under two ids counts twice and can leak between "
            "splits, so keep one row per slide"
        )
    else:
        seen_files[key] = where


def _annotation_problems(
    annotation: Path,
    slide_path: Path,
    classes: list[str] | None,
    slide_dimensions: SlideDimensions | None,
    where: str,
) -> list[str]:
    """The annotation file parsed and checked now, not after all training (see annotations.py)."""
    from hnm.io.annotations import annotation_problems

    dimensions = slide_dimensions(slide_path) if slide_dimensions else None
    problems = annotation_problems(annotation, classes, dimensions)
    return [f"{where}: {problem}" for problem in problems]


def _eval_split_problems(sheet: pd.DataFrame, allow_one_class: bool) -> list[str]:
    """A val or test split without both classes degrades the results silently; refuse it."""
    problems = []
    for split, why in _EVAL_SPLITS.items():
        labels = sheet.loc[sheet["split"] == split, "label"]
        present = sorted(int(v) for v in set(labels.dropna()))
        if present == [0, 1] or (not present and labels.isna().any()):
            continue  # both classes, or rows whose bad labels are reported already
        has = f"only label(s) {present}" if present else "no slides"
        message = (
            f"the {split} split has {has}: it needs both normal (0) and tumor (1) slides, since "
            f"{why}. Add slides of the missing class, or set allow_one_class_eval_splits: true "
            "to run anyway"
        )
        if allow_one_class:
            log.warning("%s (allowed by allow_one_class_eval_splits)", message)
        else:
            problems.append(message)
    return problems


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
    if not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        problems.append(
            f"{where}: mpp {value} um/px is outside the plausible range {PLAUSIBLE_MPP[0]}-"
            f"{PLAUSIBLE_MPP[1]} for a microscope slide; give level-0 microns per pixel (about "
            "0.25 for a 40x scan, 0.5 for 20x), not a magnification or a dpi"
        )
        return None
    return mpp


def demo_sheet(
    counts: Mapping[str, Mapping[str, int]],
    slides_dir: str,
    annotations_dir: str,
    allow_one_class_eval_splits: bool = False,
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
    return normalise(
        table,
        "demo cohort (config: demo.slides)",
        Path.cwd(),
        check_files=False,
        allow_one_class_eval_splits=allow_one_class_eval_splits,
    )


def write_normalised_sheet(sheet: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    from hnm.core.atomic import atomic_path

    with atomic_path(path) as temporary:
        sheet.to_csv(temporary, sep="\t", index=False, na_rep="")


def read_normalised_sheet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The workflow's normalised sheet, as every stage reads it; the training copy
    (results/sheet.tsv) has no annotation column, read as no annotations. Labels are integers;
    a sheet of new slides to predict (hnm.predict.sheet) has blank ones, read as NaN (unknown)."""
    if not Path(path).exists():
        raise HnmError(f"slide sheet {path} does not exist; run the workflow's sheet step first")
    sheet = pd.read_csv(
        path, sep="\t", dtype={"slide_id": str, "path": str, "split": str}, keep_default_na=False
    )
    blank = sheet["label"].astype(str).str.strip() == ""
    sheet["label"] = (
        pd.to_numeric(sheet["label"].where(~blank)) if blank.any() else sheet["label"].astype(int)
    )
    sheet["mpp"] = pd.to_numeric(sheet["mpp"], errors="coerce")
    if "annotation" not in sheet.columns:
        sheet["annotation"] = ""
    sheet["annotation"] = sheet["annotation"].fillna("").astype(str)
    return sheet
