"""A tiny real cohort with hostile file names and one slide that tiles but cannot be extracted.

Shared by the workflow-level bad-input tests (tests/test_workflow_bad_inputs.py): the folder, the
sheet and the slide files carry spaces, parentheses, both quotes, `$`, backticks and non-ASCII
letters, and one slide is named `x$(touch PWNED).tiff`, so any unquoted path in a shell command
either breaks the run or touches a file. One more slide has its full-resolution JPEG tiles
overwritten (tiling reads the intact lower levels, extraction does not), as a scanner's corrupt
level 0 would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import tifffile

from hnm.demo.synth import write_annotation, write_synthetic_slide

# Odd characters, none of them allowed in slide ids, all of them allowed in file names.
ODD_FOLDER = "my sheets (v2) 'a' \"b\" $HOME `id` é"
PWNED = "PWNED"
# (slide_id, file name, label, split); ids stay plain, file names do not.
ROWS = [
    ("tr_t1", "cmu 4 (1).tiff", "tumor", "train"),
    ("tr_t2", 'it\'s "q" `b` ü.tiff', "tumor", "train"),
    ("tr_n1", f"x$(touch {PWNED}).tiff", "normal", "train"),
    ("tr_n2", "x`touch PWNED`;ls.tiff", "normal", "train"),
    ("va_t", "val $1 ø.tiff", "tumor", "val"),
    ("va_n", "val (n).tiff", "normal", "val"),
    ("te_t", "test 'ü' (t).tiff", "tumor", "test"),
    ("te_n", 'test "n".tiff', "normal", "test"),
    ("corrupt", "corrupt level 0 (é).tiff", "tumor", "train"),
]
CORRUPT = "corrupt"
SIDE = 1024  # level-0 px: levels of 1024 and 512 px at 0.5 and 1 um/px
# The cohort is tiled at 0.5 um/px (TILING), tissue found at 8 um/px on level 1: with level 0
# corrupt, tiling succeeds and extraction cannot decode one patch.
CORRUPT_LEVELS = (0,)
TILING = {"target_mpp": 0.5, "patch_size": 64}


def corrupt_levels(path: Path, levels: tuple[int, ...]) -> None:
    """Overwrite every JPEG tile of the given pyramid levels with bytes no decoder accepts."""
    with tifffile.TiffFile(path) as tiff:
        spans = [
            (offset, count)
            for level in levels
            for offset, count in zip(
                tiff.series[0].levels[level].keyframe.dataoffsets,
                tiff.series[0].levels[level].keyframe.databytecounts,
            )
            if count
        ]
    with open(path, "r+b") as handle:
        for offset, count in spans:
            handle.seek(offset)
            handle.write(b"\x00" * count)


def write_cohort(root: Path) -> Path:
    """Slides, annotations and sheet under `root`/ODD_FOLDER; returns the sheet's path."""
    folder = root / ODD_FOLDER
    folder.mkdir(parents=True)
    lines = ["slide_id\tpath\tlabel\tsplit\tmpp\tannotation"]
    for number, (slide_id, name, label, split) in enumerate(ROWS):
        result = write_synthetic_slide(
            folder / name,
            width=SIDE,
            height=SIDE,
            label=int(label == "tumor"),
            seed=number,
            tumor_regions=1,
            mimic_regions=1,
            tumor_size_um=120,
        )
        annotation = ""
        if split == "test":
            annotation = f"{Path(name).stem} 'ann' (1).geojson"
            write_annotation(folder / annotation, result)
        lines.append(f"{slide_id}\t{name}\t{label}\t{split}\t\t{annotation}")
    corrupt_levels(folder / dict((r[0], r[1]) for r in ROWS)[CORRUPT], CORRUPT_LEVELS)
    sheet = folder / "slides (all) 'é'.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def rewrite_annotation(path: Path) -> None:
    """The same polygons, edited in place (indented differently): a changed file, same content."""
    document = json.loads(path.read_text())
    path.write_text(json.dumps(document, indent=1))


def level_count(path: Path) -> int:
    with tifffile.TiffFile(path) as tiff:
        return len(tiff.series[0].levels)
