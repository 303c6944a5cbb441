"""Camelyon16 as distributed, turned into a slide sheet with the paper's split.

The slides, labels and lesion annotations are read from the folder layout the challenge ships
(training/normal, training/tumor, testing/images, testing/reference.csv and the lesion annotation
folders or zip files); the split is the authors' own (hnm/data/camelyon16_split.tsv: 216 train, 54
val and 129 test slides), so a run reproduces their setting without anyone writing a sheet. Where
the copies people hold differ (reference.csv under testing/evaluation, annotations as a folder named
`annotations` or still zipped), the first candidate found is used and the log names it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from hnm.core.atomic import atomic_path, write_text
from hnm.core.errors import HnmError
from hnm.io.asap import read_asap, to_geojson

log = logging.getLogger(__name__)

SPLIT_FILE = "camelyon16_split.tsv"
SLIDE_NAME = re.compile(r"^(normal|tumor|test)_\d{3}$")
PREFIX_LABELS = {"normal": "normal", "tumor": "tumor"}  # test_* slides: testing/reference.csv
SLIDE_FOLDERS = ("training/normal", "training/tumor", "testing/images")
SLIDE_SUFFIXES = (".tif", ".tiff")
REFERENCE_CANDIDATES = ("testing/reference.csv", "testing/evaluation/reference.csv")
ANNOTATION_CANDIDATES = ("lesion_annotations", "annotations")
SHEET_COLUMNS = ("slide_id", "path", "label", "split", "mpp", "annotation")
_LISTED = 20  # names listed in a message before "and N more"


@dataclass
class Layout:
    """What was found under the data folder."""

    root: Path
    slides: dict[str, Path] = field(default_factory=dict)
    # slide name -> (where the XML is, for messages; a reader of its bytes)
    annotations: dict[str, tuple[str, Callable[[], bytes]]] = field(default_factory=dict)
    reference: Path | None = None
    missing: list[str] = field(default_factory=list)  # required parts not found


def authors_split() -> dict[str, str]:
    """Slide name -> split (train, val, test), as the authors' lists give it."""
    text = resources.files("hnm").joinpath("data", SPLIT_FILE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    return {row["slide_id"]: row["split"] for row in rows}


def find_layout(data: Path) -> Layout:
    """The slides, annotations and reference labels under `data` (or under data/CAMELYON16)."""
    root = data
    if not (data / "training").is_dir() and (data / "CAMELYON16").is_dir():
        root = data / "CAMELYON16"
        log.info("using %s (the CAMELYON16 folder inside %s)", root, data)
    layout = Layout(root)
    for folder in SLIDE_FOLDERS:
        if not (root / folder).is_dir():
            layout.missing.append(f"{folder}/ (slide files)")
            continue
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() not in SLIDE_SUFFIXES or path.name.startswith("."):
                continue
            if path.stem in layout.slides:
                raise HnmError(
                    f"two slide files are named {path.stem}: {layout.slides[path.stem]} and "
                    f"{path}; keep one"
                )
            layout.slides[path.stem] = path
    layout.reference = _first_existing(root, REFERENCE_CANDIDATES, "test labels", is_dir=False)
    if layout.reference is None:
        layout.missing.append(" or ".join(REFERENCE_CANDIDATES) + " (the test slides' labels)")
    for part in ("training", "testing"):
        _add_annotations(layout, part)
    return layout


def _first_existing(
    root: Path, candidates: tuple[str, ...], what: str, is_dir: bool
) -> Path | None:
    found = [
        root / name
        for name in candidates
        if ((root / name).is_dir() if is_dir else (root / name).is_file())
    ]
    if not found:
        return None
    extra = f" ({', '.join(map(str, found[1:]))} also found, not used)" if found[1:] else ""
    log.info("%s: %s%s", what, found[0], extra)
    return found[0]


def _add_annotations(layout: Layout, part: str) -> None:
    """Lesion XMLs of `part` (training or testing): a folder, or the zip file as shipped."""
    candidates = [f"{part}/{name}" for name in ANNOTATION_CANDIDATES]
    candidates += [f"{name}.zip" for name in candidates]
    found = [layout.root / name for name in candidates if (layout.root / name).exists()]
    if not found:
        log.warning(
            "no lesion annotations for %s (looked for %s): its tumor slides get no annotation, "
            "so they are left out of patch-level metrics",
            part,
            ", ".join(candidates),
        )
        return
    source = found[0]
    extra = f" ({', '.join(map(str, found[1:]))} also found, not used)" if found[1:] else ""
    log.info("lesion annotations of %s: %s%s", part, source, extra)
    if source.is_dir():
        for path in sorted(source.glob("*.xml")):
            layout.annotations[path.stem] = (str(path), path.read_bytes)
        return
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise HnmError(
            f"{source} is not a readable zip file ({error}); unzip it by hand"
        ) from error
    for member in archive.namelist():
        name = Path(member).name
        if name.lower().endswith(".xml") and "__MACOSX" not in member and not name.startswith("."):
            layout.annotations[Path(name).stem] = (
                f"{source}:{member}",
                lambda member=member: archive.read(member),
            )


def read_reference(path: Path) -> dict[str, str]:
    """test_NNN -> tumor / normal from reference.csv (rows 'test_001,Tumor,Micro,Metastases')."""
    labels: dict[str, str] = {}
    text = path.read_text(encoding="utf-8-sig")
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip():
            continue
        name = row[0].strip()
        name = name[: -len(Path(name).suffix)] if Path(name).suffix in SLIDE_SUFFIXES else name
        label = row[1].strip().lower() if len(row) > 1 else ""
        if not SLIDE_NAME.match(name) and number == 1 and label not in PREFIX_LABELS:
            log.info("%s: first row %s read as a header", path, ",".join(row))
            continue
        if label not in PREFIX_LABELS:
            raise HnmError(
                f"{path}, row {number}: label '{row[1] if len(row) > 1 else ''}' of {name} is "
                "neither Tumor nor Normal"
            )
        labels[name] = PREFIX_LABELS[label]
    return labels


def build_sheet(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    annotations_out: str | os.PathLike[str] | None = None,
    class_name: str = "Tumor",
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Write the Camelyon16 sheet to `out` (TSV) and one GeoJSON per annotated slide to
    `annotations_out` (default: <out's name>_annotations beside it); return the sheet.

    A slide of the split missing on disk is an error unless `allow_missing` (a partial download):
    then it is left out with a warning. Slides on disk outside the split are named and left out.
    """
    layout = find_layout(Path(data))
    if layout.missing and not allow_missing:
        raise HnmError(
            f"{data} is not laid out as Camelyon16 is distributed; missing: "
            f"{'; '.join(layout.missing)}. Expected training/normal/normal_001.tif ..., "
            "training/tumor/tumor_001.tif ..., testing/images/test_001.tif ... and "
            "testing/reference.csv (or give --allow-missing for a partial download)"
        )
    for part in layout.missing:
        log.warning("missing: %s", part)
    split = authors_split()
    missing = [name for name in split if name not in layout.slides]
    if missing and not allow_missing:
        raise HnmError(
            f"{len(missing)} slide(s) of the authors' split are not under {layout.root}: "
            f"{_names(missing)}; download them, or give --allow-missing to leave them out"
        )
    if missing:
        log.warning("%d slide(s) missing, left out: %s", len(missing), _names(missing))
    outside = sorted(set(layout.slides) - set(split))
    if outside:
        log.warning(
            "%d slide(s) on disk are not in the authors' split, left out: %s",
            len(outside),
            _names(outside),
        )
    reference = read_reference(layout.reference) if layout.reference else {}
    annotations_dir = Path(annotations_out or Path(out).with_name(f"{Path(out).stem}_annotations"))
    rows, unlabelled, unannotated = [], [], []
    for name, split_name in split.items():
        if name not in layout.slides:
            continue
        label = PREFIX_LABELS.get(name.split("_")[0]) or reference.get(name)
        if label is None:
            unlabelled.append(name)
            continue
        annotation = ""
        if name in layout.annotations:
            annotation = _convert(name, *layout.annotations[name], annotations_dir, class_name)
        if label == "tumor" and not annotation:
            unannotated.append(name)
        rows.append(
            {
                "slide_id": name,
                "path": os.path.abspath(layout.slides[name]),
                "label": label,
                "split": split_name,
                "mpp": "",
                "annotation": annotation,
            }
        )
    if unlabelled and not allow_missing:
        raise HnmError(
            f"{layout.reference or 'no reference.csv'} gives no label for {_names(unlabelled)}"
        )
    if unlabelled:
        log.warning("no label for %s, left out: %s", len(unlabelled), _names(unlabelled))
    if unannotated:
        log.warning(
            "%d tumor slide(s) have no lesion annotation (no patch-level metrics for them): %s",
            len(unannotated),
            _names(sorted(unannotated)),
        )
    if not rows:
        raise HnmError(f"no slide of the authors' split was found under {layout.root}")
    sheet = pd.DataFrame(rows, columns=list(SHEET_COLUMNS))
    with atomic_path(out) as temporary:
        sheet.to_csv(temporary, sep="\t", index=False)
    counts = sheet.groupby(["split", "label"]).size().to_dict()
    log.info(
        "wrote %s: %d slides, (split, label) counts %s; %d annotations in %s",
        out,
        len(sheet),
        counts,
        int((sheet["annotation"] != "").sum()),
        annotations_dir,
    )
    return sheet


def _convert(
    name: str, where: str, read: Callable[[], bytes], folder: Path, class_name: str
) -> str:
    """Convert one slide's XML; the GeoJSON's absolute path, or "" when it marks no tumor."""
    document = to_geojson(read_asap(read(), where), class_name, where)
    if not document["features"]:
        log.warning("%s marks no tumor region; %s gets no annotation", where, name)
        return ""
    target = folder / f"{name}.geojson"
    write_text(target, json.dumps(document, separators=(",", ":")) + "\n")
    return os.path.abspath(target)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
