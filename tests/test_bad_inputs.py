"""Bad input, kind by kind: each stops with a named error that says what to do, and keeps outputs.

Every case runs at the unit or CLI level (no workflow run), so the module stays fast enough for CI.
A CLI case asserts exit status 2 (an error the user can fix, printed without a traceback); every
case asserts that the message names the file, row or setting, and the fix; where a stage could
write, that finished outputs are neither deleted nor changed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from hnm.cli import main
from hnm.core.atomic import atomic_path, write_json, write_text
from hnm.core.checkpoint import Checkpointer
from hnm.core.errors import (
    CheckpointBusyError,
    CheckpointError,
    ConfigError,
    DiskFullError,
    SheetError,
    SlideError,
)
from hnm.encoders.weights import read_checkpoint
from hnm.io.sheet import validate_sheet
from hnm.mil.settings import MilSettings
from hnm.mine.sets import run_mining
from hnm.mine.settings import MineSettings

REPO = Path(__file__).resolve().parents[1]
HEADER = ["slide_id", "path", "label", "split", "mpp", "annotation"]
# A complete cohort (both classes in every split); each test spoils one thing.
GOOD_ROWS = [
    ["tr_t", "tr_t.svs", "tumor", "train", "", ""],
    ["tr_n", "tr_n.svs", "normal", "train", "", ""],
    ["va_t", "va_t.svs", "tumor", "val", "", ""],
    ["va_n", "va_n.svs", "normal", "val", "", ""],
    ["te_t", "te_t.svs", "tumor", "test", "", ""],
    ["te_n", "te_n.svs", "normal", "test", "", ""],
]
PREVIOUS_OUTPUT = "slide_id\tpath\tlabel\tsplit\tmpp\tannotation\nkept\t/x.svs\t1\ttrain\t\t\n"


# ------------------------------------------------------------------------------------- helpers


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """A folder with one distinct (fake) slide file per good row, plus spares."""
    for number, name in enumerate([row[1] for row in GOOD_ROWS] + ["x.svs", "y.svs"]):
        (tmp_path / name).write_bytes(b"slide %d" % number)
    return tmp_path


def write_sheet(folder: Path, rows: list[list[str]], name: str = "sheet.tsv") -> Path:
    path = folder / name
    path.write_text("".join("\t".join(row) + "\n" for row in [HEADER, *rows]))
    return path


def check_sheet(sheet: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """Run `hnm check-sheet` onto a previous output; assert that a failure leaves it unchanged."""
    out = sheet.parent / "normalised.tsv"
    out.write_text(PREVIOUS_OUTPUT)
    status = main(["check-sheet", "--sheet", str(sheet), "--out", str(out), *extra])
    err = capsys.readouterr().err
    if status != 0:
        assert out.read_text() == PREVIOUS_OUTPUT, "a failed check changed the finished output"
        assert "Traceback" not in err
    return status, err


def replace_row(index: int, **changes: str) -> list[list[str]]:
    rows = [list(row) for row in GOOD_ROWS]
    for key, value in changes.items():
        rows[index][HEADER.index(key)] = value
    return rows


def feature_collection(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def polygon_feature(points: list[list[float]], name: str | None = "Tumor") -> dict:
    properties = {"classification": {"name": name}} if name else {}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [points + [points[0]]]},
        "properties": properties,
    }


SQUARE = [[100.0, 100.0], [400.0, 100.0], [400.0, 400.0], [100.0, 400.0]]


# ----------------------------------------------------------------------- 1-17: the slide sheet


def test_01_a_good_sheet_passes(cohort: Path, capsys) -> None:
    status, _ = check_sheet(write_sheet(cohort, GOOD_ROWS), capsys)
    assert status == 0


def test_02_missing_sheet_file(tmp_path: Path, capsys) -> None:
    status, err = check_sheet(tmp_path / "nope.tsv", capsys)
    assert status == 2 and "nope.tsv" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("slide_id", "expected"),
    [("", "slide_id must be"), ("../evil", "slide_id must be"), ("a b", "no path separators")],
)
def test_03_missing_or_unsafe_ids(cohort: Path, capsys, slide_id: str, expected: str) -> None:
    status, err = check_sheet(write_sheet(cohort, replace_row(0, slide_id=slide_id)), capsys)
    assert status == 2 and f"row 2 (slide_id '{slide_id}')" in err and expected in err


def test_04_duplicate_id(cohort: Path, capsys) -> None:
    rows = replace_row(1, slide_id="tr_t")
    status, err = check_sheet(write_sheet(cohort, rows), capsys)
    assert status == 2 and "row 3 (slide_id 'tr_t'): duplicate slide_id, first used in row 2" in err


def test_05_unknown_label_names_the_config_key(cohort: Path, capsys) -> None:
    status, err = check_sheet(write_sheet(cohort, replace_row(2, label="Malignant")), capsys)
    assert status == 2 and "row 4 (slide_id 'va_t'): label 'Malignant'" in err
    assert "set `labels` in the config" in err


def test_06_unknown_split(cohort: Path, capsys) -> None:
    status, err = check_sheet(write_sheet(cohort, replace_row(4, split="holdout")), capsys)
    assert status == 2 and "row 6 (slide_id 'te_t'): split 'holdout'" in err


def test_07_one_class_train_split(cohort: Path, capsys) -> None:
    status, err = check_sheet(write_sheet(cohort, replace_row(1, label="tumor")), capsys)
    assert status == 2 and "train split has only label(s) [1]" in err and "needs both" in err


@pytest.mark.parametrize(("index", "split"), [(3, "val"), (4, "test")])
def test_08_val_or_test_split_without_both_classes(
    cohort: Path, capsys, index: int, split: str
) -> None:
    """Was silent: threshold 0.5 on a one-class val split, a blank test AUC."""
    label = "tumor" if split == "val" else "normal"
    sheet = write_sheet(cohort, replace_row(index, label=label))
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and f"the {split} split has only label(s)" in err
    assert "allow_one_class_eval_splits: true" in err and "Add slides of the missing class" in err
    status, _ = check_sheet(sheet, capsys, "--allow-one-class-eval-splits")
    assert status == 0


def test_09_absent_val_split(cohort: Path, capsys) -> None:
    rows = [row for row in GOOD_ROWS if row[3] != "val"]
    status, err = check_sheet(write_sheet(cohort, rows), capsys)
    assert status == 2 and "the val split has no slides" in err


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotdot"])
def test_10_one_slide_file_under_two_ids(cohort: Path, capsys, link: str) -> None:
    """Was silent: the same slide in train and test (leakage), found by the resolved file."""
    target = cohort / "tr_t.svs"
    if link == "symlink":
        (cohort / "alias.svs").symlink_to(target)
        path = "alias.svs"
    elif link == "hardlink":
        os.link(target, cohort / "alias.svs")
        path = "alias.svs"
    else:
        (cohort / "sub").mkdir()
        path = "sub/../tr_t.svs"
    rows = replace_row(4, path=path)
    status, err = check_sheet(write_sheet(cohort, rows), capsys)
    assert status == 2 and "row 6 (slide_id 'te_t')" in err
    assert "is the same file as row 2 (slide_id 'tr_t')" in err and "one row per slide" in err


@pytest.mark.parametrize(
    ("mpp", "expected"),
    [
        ("fast", "mpp 'fast' is not a number"),
        ("-0.25", "mpp must be positive"),
        ("0", "mpp must be positive"),
        ("40", ""),  # plausible (a 1.25x overview would be 8 um/px; 40 is still inside 0.05-50)
        ("400", "outside the plausible range"),
        ("nan", "mpp must be positive"),
    ],
)
def test_11_bogus_mpp(cohort: Path, capsys, mpp: str, expected: str) -> None:
    status, err = check_sheet(write_sheet(cohort, replace_row(0, mpp=mpp)), capsys)
    if not expected:
        assert status == 0
        return
    assert status == 2 and "row 2 (slide_id 'tr_t')" in err and expected in err


def test_12_semicolon_separated_sheet_names_the_separator(cohort: Path, capsys) -> None:
    sheet = cohort / "sheet.csv"
    sheet.write_text("".join(";".join(row) + "\n" for row in [HEADER, *GOOD_ROWS]))
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and "missing column(s)" in err
    assert "separated by semicolons" in err and "comma-separated as .csv" in err


def test_13_latin1_sheet_says_save_as_utf8(cohort: Path, capsys) -> None:
    rows = replace_row(0, slide_id="tr_t")
    text = "".join("\t".join(row) + "\n" for row in [HEADER, *rows]).replace("tumor", "tumör", 1)
    sheet = cohort / "sheet.tsv"
    sheet.write_bytes(text.encode("latin-1"))
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and str(sheet) in err and "not UTF-8" in err and "UTF-8 TSV" in err


@pytest.mark.parametrize("name", ["sheet.xlsx", "sheet.csv"])
def test_14_excel_workbook_says_save_as_utf8(cohort: Path, capsys, name: str) -> None:
    sheet = cohort / name
    with zipfile.ZipFile(sheet, "w") as workbook:  # an .xlsx is a zip of XML parts
        workbook.writestr("[Content_Types].xml", "<Types/>")
        workbook.writestr("xl/workbook.xml", "<workbook/>")
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and "spreadsheet workbook" in err and "CSV UTF-8" in err


def test_15_missing_columns_and_empty_sheet(cohort: Path, capsys) -> None:
    sheet = cohort / "sheet.tsv"
    sheet.write_text("slide_id\tpath\tlabel\n")
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and "missing column(s) split" in err and "separated by" not in err
    sheet.write_text("\t".join(HEADER) + "\n")
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and "the sheet has no rows" in err


def test_16_missing_slide_file(cohort: Path, capsys) -> None:
    status, err = check_sheet(write_sheet(cohort, replace_row(5, path="gone.svs")), capsys)
    assert status == 2 and "row 7 (slide_id 'te_n'): slide file not found" in err
    assert str(cohort / "gone.svs") in err


def test_17_every_problem_at_once(cohort: Path, capsys) -> None:
    rows = replace_row(0, label="maybe")
    rows[1][3] = "holdout"
    rows[2][4] = "x"
    status, err = check_sheet(write_sheet(cohort, rows), capsys)
    assert status == 2 and "problem(s); nothing was run" in err
    assert "row 2" in err and "row 3" in err and "row 4" in err


# --------------------------------------------------------------------- 18-24: annotation files


def annotated_sheet(folder: Path, document: object | str, slide: str = "te_t.svs") -> Path:
    annotation = folder / "te_t.geojson"
    annotation.write_text(document if isinstance(document, str) else json.dumps(document))
    rows = replace_row(4, path=slide, annotation="te_t.geojson")
    return write_sheet(folder, rows)


def test_18_a_good_annotation_passes(cohort: Path, capsys) -> None:
    status, _ = check_sheet(
        annotated_sheet(cohort, feature_collection(polygon_feature(SQUARE))), capsys
    )
    assert status == 0


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ('{"type": "FeatureCollection", "features": [', "is not readable JSON"),
        ({"regions": []}, "is not valid GeoJSON"),
        (
            feature_collection(
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}
            ),
            "is not valid GeoJSON",
        ),
        (
            feature_collection({"type": "Feature", "geometry": {"type": "Circle"}}),
            "unknown geometry type",
        ),
    ],
)
def test_19_malformed_geojson_is_found_with_the_sheet(
    cohort: Path, capsys, document: object, expected: str
) -> None:
    """Was found only at evaluation, after all training."""
    status, err = check_sheet(annotated_sheet(cohort, document), capsys)
    assert status == 2 and "row 6 (slide_id 'te_t')" in err and "te_t.geojson" in err
    assert expected in err and "export it" in err


def test_20_points_instead_of_polygons(cohort: Path, capsys) -> None:
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [5, 5]},
        "properties": {"classification": {"name": "Tumor"}},
    }
    status, err = check_sheet(annotated_sheet(cohort, feature_collection(point)), capsys)
    assert status == 2 and "feature 0 (class Tumor) has a Point geometry" in err
    assert "draw Tumor regions as polygons" in err


def test_21_unknown_annotation_class(cohort: Path, capsys) -> None:
    document = feature_collection(polygon_feature(SQUARE, "Tumour"))
    sheet = annotated_sheet(cohort, document)
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and "class(es) Tumour, which are not scored (known: Tumor)" in err
    assert "evaluate.versus_classes" in err
    status, _ = check_sheet(sheet, capsys, "--annotation-classes", '["Tumor", "tumour"]')
    assert status == 0


def test_22_polygons_outside_the_slide(test_slides: Path, cohort: Path, capsys) -> None:
    """cmu-1-small-region.svs is 2220 x 2967 px: a polygon at 10x those coordinates is not on it."""
    slide = str(test_slides / "cmu-1-small-region.svs")
    far = [[x * 10, y * 10] for x, y in [[2000, 2000], [2200, 2000], [2200, 2900]]]
    status, err = check_sheet(
        annotated_sheet(cohort, feature_collection(polygon_feature(far)), slide), capsys
    )
    assert status == 2 and "beyond the slide's 2220 x 2967 level-0 pixels" in err
    assert "level-0 (full resolution) pixel coordinates" in err
    near = [[2000, 2000], [2220, 2000], [2220, 2967]]  # to the very edge is fine
    status, _ = check_sheet(
        annotated_sheet(cohort, feature_collection(polygon_feature(near)), slide), capsys
    )
    assert status == 0


def test_23_missing_annotation_file(cohort: Path, capsys) -> None:
    rows = replace_row(4, annotation="none.geojson")
    status, err = check_sheet(write_sheet(cohort, rows), capsys)
    assert status == 2 and "annotation file not found" in err and "none.geojson" in err


def test_24_annotation_checks_need_no_cli(cohort: Path) -> None:
    """validate_sheet (which the Snakefile calls while building the DAG) finds the same."""
    with pytest.raises(SheetError) as caught:
        validate_sheet(annotated_sheet(cohort, "not json"))
    assert any("te_t.geojson" in problem for problem in caught.value.problems)


# ------------------------------------------------------------------------- 25-32: slide files


def tile(slide: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "tile",
            "--slide",
            str(slide),
            "--slide-id",
            "s1",
            "--out",
            str(out / "s1.h5"),
            "--qc",
            str(out / "s1.png"),
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("name", "reader_message"),
    [
        ("broken.svs", "Unsupported or missing image file"),
        ("unopenable.tiff", "Unsupported TIFF compression"),
        ("unreadable.svs", "Bogus marker length"),
    ],
)
def test_25_corrupt_or_unopenable_slides(
    test_slides: Path, tmp_path: Path, capsys, name: str, reader_message: str
) -> None:
    assert tile(test_slides / name, tmp_path) == 2
    err = capsys.readouterr().err
    assert "slide 's1'" in err and str(test_slides / name) in err and reader_message in err
    assert "on_slide_error: skip" in err and not re.search(r"\. [a-z]", err)
    assert not list(tmp_path.iterdir())


def test_26_missing_slide_file_at_tiling(tmp_path: Path, capsys) -> None:
    assert tile(tmp_path / "gone.svs", tmp_path) == 2
    err = capsys.readouterr().err
    assert "gone.svs" in err and "file not found" in err and "Check the path" in err


def test_27_missing_or_nonsense_resolution_and_sheet_mpp(test_slides: Path, tmp_path, capsys):
    no_resolution = tmp_path / "no_mpp.tiff"
    tifffile.imwrite(
        no_resolution, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb"
    )
    out = tmp_path / "out"
    assert tile(no_resolution, out) == 2
    err = capsys.readouterr().err
    assert "has no resolution" in err and "Give it in the sheet's 'mpp' column" in err
    assert tile(test_slides / "boxes.tiff", out) == 2
    err = capsys.readouterr().err
    assert "352.8 um/px" in err and "'mpp' column" in err
    assert tile(test_slides / "cmu-1-small-region.svs", out, "--mpp", "1000") == 2
    err = capsys.readouterr().err
    assert "the sheet's mpp 1000.0 is outside" in err and "Give level-0 microns per pixel" in err
    assert not out.exists() or not list(out.iterdir())


def test_28_slide_smaller_than_one_patch(test_slides: Path, tmp_path: Path, capsys) -> None:
    """small.svs is 16 x 16 px: was 0 patches and a warning, now a named error."""
    assert tile(test_slides / "small.svs", tmp_path, "--target-mpp", "0.5") == 2
    err = capsys.readouterr().err
    assert "slide 's1'" in err and "(16 x 16 level-0 px) is smaller than one patch" in err
    assert "on_slide_error: skip" in err and not list(tmp_path.iterdir())


def test_29_slide_without_tissue(tmp_path: Path, capsys) -> None:
    slide = tmp_path / "glass.tiff"
    glass = np.full((512, 512, 3), 242, np.uint8)
    tifffile.imwrite(
        slide,
        glass,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    assert tile(slide, out, "--patch-size", "64") == 2
    err = capsys.readouterr().err
    assert "no patch has 50% tissue" in err and "tile.min_tissue_fraction" in err
    assert not out.exists() or not list(out.iterdir())


def test_30_upsampling_refused(test_slides: Path, tmp_path: Path, capsys) -> None:
    assert tile(test_slides / "cmu-1-small-region.svs", tmp_path, "--target-mpp", "0.1") == 2
    err = capsys.readouterr().err
    assert "finer than the scan" in err and "Use target_mpp >=" in err


@pytest.mark.parametrize(
    ("flag", "value", "setting"),
    [
        ("--overlap", "1.0", "overlap"),
        ("--patch-size", "0", "patch_size"),
        ("--min-tissue-fraction", "1.5", "min_tissue_fraction"),
    ],
)
def test_31_out_of_range_tiling_settings(
    test_slides: Path, tmp_path: Path, capsys, flag: str, value: str, setting: str
) -> None:
    slide = test_slides / "cmu-1-small-region.svs"
    assert tile(slide, tmp_path, flag, value, "--on-slide-error", "skip") == 2
    assert setting in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_32_failed_slides_report_does_not_say_to_skip(test_slides: Path, tmp_path: Path) -> None:
    """Was: every row of failed_slides.tsv said 'set on_slide_error: skip' for a skipped slide."""
    assert tile(test_slides / "broken.svs", tmp_path, "--on-slide-error", "skip") == 0
    old = tmp_path / "old.h5"  # a tiles file written before the fix, with the hint in its error
    from hnm.io.h5io import read_tiles
    from hnm.tile.grid import write_tiles_file

    _coords, attrs = read_tiles(tmp_path / "s1.h5")
    attrs.update(
        slide_id="old",
        error="openslide failed: X. The slide's data is probably "
        "corrupt; set on_slide_error: skip to exclude it",
    )
    write_tiles_file(old, np.zeros((0, 2), np.int64), attrs, tissue_fraction=[])
    report = tmp_path / "failed_slides.tsv"
    assert (
        main(["failures", "--tiles", str(tmp_path / "s1.h5"), str(old), "--out", str(report)]) == 0
    )
    rows = [line.split("\t") for line in report.read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == ["s1", "old"]
    assert "Unsupported or missing image file" in rows[0][2]
    assert all("on_slide_error" not in row[2] for row in rows)
    assert rows[1][2] == "openslide failed: X. The slide's data is probably corrupt"


# ---------------------------------------------------------------------- 33-36: weights files


class NotAllowed:
    """Pickled into a weights file: loading it would run code, so weights_only refuses it."""


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "not found"),
        ("truncated", "may be truncated"),
        ("text", "may be truncated"),
        ("pickled", "need code to unpickle"),
    ],
)
def test_33_unreadable_weights_files(tmp_path: Path, kind: str, expected: str) -> None:
    path = tmp_path / "weights.pt"
    if kind == "truncated":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
        path.write_bytes(path.read_bytes()[:-200])
    elif kind == "text":
        path.write_text("<html>403 Forbidden</html>")
    elif kind == "pickled":
        torch.save({"model": NotAllowed()}, path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_34_wrong_weights_through_the_cli(tmp_path: Path, capsys) -> None:
    path = tmp_path / "other.pt"
    torch.save({"encoder.blocks.0.weight": torch.zeros(3), "decoder.weight": torch.zeros(2)}, path)
    out = tmp_path / "encoder.pt"
    status = main(
        ["init-encoder", "--arch", "resnet_mini", "--weights", str(path), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert status == 2 and str(path) in err and not out.exists()


def test_35_weights_without_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "args.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    from hnm.encoders import build_encoder, load_weights

    with pytest.raises(CheckpointError, match="no state dict found"):
        load_weights(path, build_encoder("resnet_mini", {}, seed=0, proj_dim=8))


# ------------------------------------------------------------------------- 36-39: a full disk


def test_36_disk_full_in_the_atomic_writer_names_path_space_and_resume(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.9})

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", lambda *_a, **_k: full())
    with pytest.raises(DiskFullError) as caught:
        write_text(target, "new")
    message = str(caught.value)
    assert str(target) in message and "free there" in message
    assert "run the same command again" in message and "finished outputs are kept" in message
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"auc": 0.9}  # the finished file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_37_torch_save_disk_full_in_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """torch.save reports a full disk as 'unexpected pos', without 'No space left'."""
    with Checkpointer(tmp_path / "ckpt", "abc") as checkpointer:
        checkpointer.save({"epoch": 3})

        def failing_save(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                "file data/0: file write failed; iostream error: unexpected pos 4096 vs 1024"
            )

        monkeypatch.setattr(torch, "save", failing_save)
        with pytest.raises(DiskFullError) as caught:
            checkpointer.save({"epoch": 4})
        monkeypatch.undo()
        message = str(caught.value)
        assert "no space left to write" in message and "state.pt" in message
        assert "epoch 4" in message and "rerun continues from it" in message
        assert checkpointer.load()["epoch"] == 3  # the previous checkpoint is intact


def test_38_disk_full_through_the_cli_is_one_message(cohort: Path, capsys, monkeypatch) -> None:
    sheet = write_sheet(cohort, GOOD_ROWS)

    def fsync(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    status, err = check_sheet(sheet, capsys)
    assert status == 2 and "normalised.tsv" in err and "Free space on that disk" in err


def test_39_other_write_errors_are_not_called_disk_full(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x.txt"):
        raise PermissionError(errno.EACCES, "Permission denied")


# ------------------------------------------------------- 40-42: orphans and shared checkpoints


def test_40_two_writers_never_share_a_checkpoint_folder(tmp_path: Path) -> None:
    first = Checkpointer(tmp_path / "ckpt", "abc")
    with pytest.raises(CheckpointBusyError) as caught:
        Checkpointer(tmp_path / "ckpt", "abc")
    message = str(caught.value)
    assert str(tmp_path / "ckpt") in message and f"process {os.getpid()}" in message
    assert "another job" in message and "rerun this command" in message
    first.close()
    Checkpointer(tmp_path / "ckpt", "abc").close()  # free again once the first job ends


def test_41_a_checkpoint_folder_held_by_another_process(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hnm.core.checkpoint import Checkpointer; "
            f"c = Checkpointer({str(folder)!r}, 'abc'); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointBusyError, match=f"process {holder.pid}"):
            Checkpointer(folder, "abc")
    finally:
        holder.kill()
        holder.wait()
    Checkpointer(folder, "abc").close()  # the kernel released the dead holder's lock


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {child!r}])
print(child.pid, flush=True)
child.wait()
"""
# As Snakemake starts a stage: through a bash wrapper that outlives Snakemake (the trailing
# command keeps bash from exec-ing python, so bash stays the stage's parent).
PARENT_VIA_SHELL = """
import shlex, subprocess, sys, time
code = {child!r}
command = shlex.quote(sys.executable) + " -c " + shlex.quote(code) + " & echo $! ; wait ; true"
shell = subprocess.Popen(["bash", "-c", command])
shell.wait()
"""
# A stage started through the real CLI entry (main() with no argument list), kept busy.
CHILD = (
    "import sys, time; import hnm.cli, hnm.commands.check_sheet as stage; "
    "stage.run = lambda args: (print('ready', flush=True), time.sleep(60)); "
    "sys.argv = ['hnm', 'check-sheet', '--sheet', 'x.tsv']; hnm.cli.main()"
)
# The same without the kernel's death signal: the watcher thread alone must notice.
CHILD_WATCHER_ONLY = (
    "import hnm.core.lifetime as lifetime; lifetime._request_death_signal = lambda: False; "
    "lifetime.WATCH_SECONDS = 0.2; lifetime.exit_with_parent.__defaults__ = (0.2,); " + CHILD
)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's corpse may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize(
    ("parent_code", "child"),
    [(PARENT, CHILD), (PARENT, CHILD_WATCHER_ONLY), (PARENT_VIA_SHELL, CHILD)],
    ids=["death-signal", "watcher", "through-a-shell"],
)
def test_42_a_stage_ends_when_its_parent_is_killed(parent_code: str, child: str) -> None:
    """Was: after kill -9 of snakemake, stages ran on and kept writing checkpoints."""
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code.format(child=child)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    child_pid = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"
        assert _alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "the stage outlived its killed parent"
    finally:
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


# ------------------------------------------------------------ 43-45: settings and wording


def test_43_out_of_range_and_unknown_settings() -> None:
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        MilSettings(epochs=0)
    with pytest.raises(ConfigError, match="fixed_epoch 12 is outside"):
        MilSettings(epochs=10, fixed_epoch=12)
    with pytest.raises(ConfigError, match="aggregator 'transformer' is not one of"):
        MilSettings(aggregator="transformer")
    with pytest.raises(ConfigError) as caught:
        MilSettings.from_config({"epoch": 5})
    assert "unknown key(s) epoch" in str(caught.value) and "epochs" in str(caught.value)


def test_44_an_empty_training_slide_is_logged_with_its_label(caplog) -> None:
    """Was: 'slide empty (label None)' in the mining log."""
    sheet = pd.DataFrame(
        {
            "slide_id": ["n1", "p1", "empty", "v1"],
            "path": "",
            "label": [0, 1, 1, 0],
            "split": ["train", "train", "train", "val"],
            "mpp": np.nan,
            "annotation": "",
        }
    )
    scores = pd.DataFrame(
        {
            "slide_id": ["n1", "n1", "p1", "p1"],
            "idx": [0, 1, 0, 1],
            "logit": 0.0,
            "score": [0.2, 0.7, 0.9, 0.4],
        }
    )
    _sets, summary = run_mining(sheet, scores, "train.parquet", 0.8, 0, MineSettings())
    assert summary["slides"]["empty"]["label"] == 1 and summary["excluded_slides"] == ["empty"]


def test_45_hints_start_a_sentence_in_upper_case() -> None:
    error = SlideError("s1", "/x.svs", "it is broken", "leave it out of the sheet")
    assert str(error) == "slide 's1' (/x.svs): it is broken. Leave it out of the sheet"


# ------------------------------------------------- 46-47: what skip mode dropped, said once


def test_46_failed_slides_lists_extraction_and_fine_tuning_skips(tmp_path: Path) -> None:
    """Was: only tiling's skips reached failed_slides.tsv; extraction's and fine-tuning's stayed
    in their job logs."""
    from hnm.encoders import build_encoder, save_encoder_file
    from hnm.io.h5io import FeatureWriter, write_tiles

    def slide(name: str, failed: bool = False, error: str = "") -> dict:
        return {
            "slide_id": name,
            "slide_path": f"/s/{name} (1).svs",
            "failed": failed,
            "error": error,
        }

    tiles, features = [], []
    for name, failed in (("t0", True), ("x1", False), ("f2", False), ("ok", False)):
        path = tmp_path / f"{name}.h5"
        write_tiles(
            path, np.zeros((0 if failed else 3, 2), np.int64), slide(name, failed, "no tissue")
        )
        tiles.append(str(path))
        for round_ in (0, 1):
            attrs = {**slide(name, failed, "no tissue"), "round": round_}
            if name == "x1":  # tiled, but its pixels do not decode
                attrs.update(failed=True, error="decoding JPEG tiles failed: bad Huffman code")
            out = tmp_path / f"r{round_}_{name}.h5"
            with FeatureWriter(out, 4, np.zeros((0, 2), np.int64), attrs):
                pass
            features.append(str(out))
    encoder = tmp_path / "encoder.pt"
    skipped = {"f2": {"path": "/s/f2 (1).svs", "error": "reading patches failed: truncated"}}
    save_encoder_file(
        encoder,
        build_encoder("resnet_mini", seed=0),
        source="r0",
        round=1,
        extra={"skipped_slides": skipped},
    )
    report = tmp_path / "failed_slides.tsv"
    args = ["failures", "--tiles", *tiles, "--features", *features, "--encoders", str(encoder)]
    assert main([*args, "--out", str(report)]) == 0
    rows = pd.read_csv(report, sep="\t", keep_default_na=False)
    assert list(rows.columns) == ["slide_id", "path", "error", "stage"]
    assert rows.values.tolist() == [
        ["t0", "/s/t0 (1).svs", "no tissue", "tiling"],
        [
            "x1",
            "/s/x1 (1).svs",
            "decoding JPEG tiles failed: bad Huffman code",
            "extraction (rounds 0, 1)",
        ],
        ["f2", "/s/f2 (1).svs", "reading patches failed: truncated", "fine-tuning (round 1)"],
    ]


def test_47_skipped_and_degraded_are_warnings_of_the_run(tmp_path: Path) -> None:
    """Was: exit 0 and a worse result, with the reasons only inside job logs."""
    from hnm.evaluate.warnings import end_of_run_summary, read_failures, run_warnings

    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "failed_slides.tsv").write_text(
        "slide_id\tpath\terror\tstage\nx1\t/s/x1.svs\tbad Huffman code\textraction (round 0)\n"
    )
    note = "validation split lacks a class; the decision threshold is 0.5"
    mil = [
        {"notes": [note], "excluded_slides": [{"slide_id": "x1", "split": "test", "reason": "r"}]},
        {
            "notes": [note],
            "excluded_slides": [{"slide_id": "e", "split": "train", "reason": "empty"}],
        },
    ]
    final = {
        "split": "test",
        "slide": {"n_slides": 1, "n_positive": 1, "auc": None, "not_scored": ["x1"]},
    }
    warnings = run_warnings(read_failures(tmp_path / "qc" / "failed_slides.tsv"), mil, final)
    assert warnings == [
        "slide 'x1' was skipped at extraction (round 0): bad Huffman code (/s/x1.svs)",
        f"MIL (rounds 0, 1): {note}",
        "slide 'e' (train) was left out of MIL (round 1): empty",
        "the test slide AUC is undefined: the usable test slides are 1 positive and 0 negative",
    ]
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "metrics.json").write_text(json.dumps({"warnings": warnings}))
    summary = end_of_run_summary(tmp_path)
    assert summary.startswith("1 slide(s) were skipped (on_slide_error: skip)")
    assert "x1, at extraction (round 0): bad Huffman code" in summary
    assert f"MIL (rounds 0, 1): {note}" in summary and summary.count("x1") == 1
    assert end_of_run_summary(tmp_path / "nothing") == ""
