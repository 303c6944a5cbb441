"""The slide sheet is checked in full before any work: every bad row is named with its problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnm.cli import main
from hnm.core.errors import SheetError
from hnm.io.sheet import demo_sheet, read_normalised_sheet, validate_sheet

HEADER = "slide_id\tpath\tlabel\tsplit\tmpp\tannotation\n"
# Val and test slides of both classes, appended to every sheet so that only what a test writes
# itself can be wrong.
EVAL_ROWS = [
    "v0\tv0.svs\ttumor\tval\t\t",
    "v1\tv1.svs\tnormal\tval\t\t",
    "t0\tt0.svs\ttumor\ttest\t\t",
    "t1\tt1.svs\tnormal\ttest\t\t",
]


@pytest.fixture
def slide_files(tmp_path: Path) -> Path:
    names = ("a", "b", "c", "d", "e", "f", "g", "h", "v0", "v1", "t0", "t1")
    for number, name in enumerate(names):
        (tmp_path / f"{name}.svs").write_bytes(b"not really a slide %d" % number)
    return tmp_path


def write_sheet(folder: Path, rows: list[str], name: str = "sheet.tsv") -> Path:
    path = folder / name
    path.write_text(HEADER + "".join(row + "\n" for row in rows + EVAL_ROWS))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SheetError) as caught:
        validate_sheet(path)
    return caught.value.problems


def test_a_good_sheet_is_normalised(slide_files: Path) -> None:
    path = write_sheet(
        slide_files,
        [
            "s1\ta.svs\ttumor\ttrain\t0.25\t",
            "s2\tb.svs\tnormal\tTrain\t\t",
            "s3\tc.svs\t1\tval\t\t",
            "s4\td.svs\t0\ttest\t\t",
        ],
    )
    sheet = validate_sheet(path)
    assert list(sheet["label"])[:4] == [1, 0, 1, 0]
    assert list(sheet["split"])[:4] == ["train", "train", "val", "test"]
    assert sheet.loc[0, "path"] == str(slide_files / "a.svs")
    assert sheet.loc[0, "mpp"] == 0.25


def test_every_kind_of_bad_row_is_named(slide_files: Path) -> None:
    path = write_sheet(
        slide_files,
        [
            "s1\ta.svs\ttumor\ttrain\t\t",
            "s1\tb.svs\tnormal\ttrain\t\t",  # duplicate id (row 3)
            "../evil\tc.svs\tnormal\ttrain\t\t",  # path separator in id (row 4)
            "s4\tmissing.svs\tnormal\ttrain\t\t",  # missing file (row 5)
            "s5\td.svs\tmaybe\ttrain\t\t",  # bad label (row 6)
            "s6\te.svs\ttumor\tholdout\t\t",  # unknown split (row 7)
            "s7\tf.svs\ttumor\ttest\tfast\t",  # mpp not a number (row 8)
            "s8\tg.svs\ttumor\ttest\t\tnone.geojson",  # missing annotation (row 9)
        ],
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert "row 3 (slide_id 's1'): duplicate slide_id, first used in row 2" in text
    assert "row 4 (slide_id '../evil'): slide_id must be" in text
    assert "row 5 (slide_id 's4'): slide file not found" in text and "missing.svs" in text
    assert "row 6 (slide_id 's5'): label 'maybe' is not one of" in text
    assert "row 7 (slide_id 's6'): split 'holdout' is not one of train, val, test" in text
    assert "row 8 (slide_id 's7'): mpp 'fast' is not a number" in text
    assert "row 9 (slide_id 's8'): annotation file not found" in text
    assert len(problems) == 7


def test_a_training_split_with_one_class_is_refused(slide_files: Path) -> None:
    path = write_sheet(slide_files, ["s1\ta.svs\ttumor\ttrain\t\t", "s2\tb.svs\ttumor\ttrain\t\t"])
    (problem,) = problems_of(path)
    assert "train split has only label(s) [1]" in problem and "needs both" in problem


def test_missing_columns_and_csv(slide_files: Path) -> None:
    path = slide_files / "sheet.csv"
    path.write_text("slide_id,path,label\ns1,a.svs,tumor\n")
    (problem,) = problems_of(path)
    assert "missing column(s) split" in problem
    rows = [row.split("\t")[:4] for row in EVAL_ROWS]
    path.write_text(
        "slide_id,path,label,split\ns1,a.svs,tumor,train\ns2,b.svs,normal,train\n"
        + "".join(",".join(row) + "\n" for row in rows)
    )
    assert len(validate_sheet(path)) == 6


def test_custom_label_names(slide_files: Path) -> None:
    path = write_sheet(
        slide_files, ["s1\ta.svs\tmetastasis\ttrain\t\t", "s2\tb.svs\tbenign\ttrain\t\t"]
    )
    labels = {"metastasis": 1, "benign": 0, "tumor": 1, "normal": 0}
    sheet = validate_sheet(path, labels=labels)
    assert list(sheet["label"])[:2] == [1, 0]


def test_cli_reports_all_problems_and_writes_nothing(slide_files: Path, capsys) -> None:
    path = write_sheet(
        slide_files, ["s1\ta.svs\ttumor\ttrain\t\t", "s1\tnope.svs\tnormal\ttrain\t\t"]
    )
    out = slide_files / "normalised.tsv"
    assert main(["check-sheet", "--sheet", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s); nothing was run" in err
    assert "duplicate slide_id" in err and "slide file not found" in err
    assert not out.exists()


def test_normalised_sheet_round_trips(slide_files: Path) -> None:
    path = write_sheet(
        slide_files, ["s1\ta.svs\ttumor\ttrain\t0.5\t", "s2\tb.svs\tnormal\ttrain\t\t"]
    )
    out = slide_files / "normalised.tsv"
    assert main(["check-sheet", "--sheet", str(path), "--out", str(out)]) == 0
    sheet = read_normalised_sheet(out)
    assert list(sheet["slide_id"])[:2] == ["s1", "s2"]
    assert sheet.loc[0, "mpp"] == 0.5 and sheet["mpp"].isna()[1]


def test_demo_sheet_layout(tmp_path: Path) -> None:
    counts = {
        "train": {"tumor": 2, "normal": 1},
        "val": {"tumor": 1, "normal": 1},
        "test": {"tumor": 0, "normal": 1},
    }
    sheet = demo_sheet(
        counts, str(tmp_path / "slides"), str(tmp_path / "ann"), allow_one_class_eval_splits=True
    )
    assert len(sheet) == 6
    assert sheet["slide_id"].is_unique
    assert (sheet.groupby("split")["label"].sum().to_dict()) == {"test": 0, "train": 2, "val": 1}
    assert all(p.endswith(f"{s}.tiff") for p, s in zip(sheet["path"], sheet["slide_id"]))
