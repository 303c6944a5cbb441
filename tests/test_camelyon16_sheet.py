"""`hnm sheet camelyon16`: the authors' split, the labels and the lesion annotations of a folder laid
out as Camelyon16 is distributed, on a fake copy made of tiny real slides (16 x 16 px each)."""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import shutil
import tomllib
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from hnm.cli import main
from hnm.core.errors import HnmError
from hnm.io.annotations import load_polygons, load_polygons_by_class, patch_tumor_fraction
from hnm.io.asap import read_asap, to_geojson
from hnm.io.camelyon16 import authors_split, build_sheet
from hnm.io.sheet import validate_sheet
from hnm.io.slide import level0_dimensions

# Facts read by hand from the authors' lists (train/dataset/CAMELYON16/*_bags.txt).
SPOT_CHECKS = {
    "normal_155": "train",
    "normal_073": "train",
    "normal_123": "val",
    "tumor_066": "val",
    "tumor_007": "val",
    "test_001": "test",
    "test_130": "test",
}
# On disk in Camelyon16 but in none of the authors' lists.
NOT_IN_SPLIT = ("normal_086", "test_049")


def _annotation(name: str, group: str, points: list[tuple[float, float]], order=None) -> str:
    """One ASAP <Annotation>; `order` lists the vertices' positions in the document."""
    positions = order or range(len(points))
    coordinates = "".join(
        f'<Coordinate Order="{index}" X="{points[index][0]}" Y="{points[index][1]}" />'
        for index in positions
    )
    return (
        f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
        f"<Coordinates>{coordinates}</Coordinates></Annotation>"
    )


def _asap(*annotations: str) -> str:
    return (
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        + "".join(annotations)
        + "</Annotations><AnnotationGroups /></ASAP_Annotations>"
    )


def _square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# tumor_001: a 12 x 12 tumor square with a 4 x 4 exclusion in it; the outer square's vertices are
# written out of order (their Order attributes say the true one, as ASAP files may).
TUMOR_001_XML = _asap(
    _annotation("Annotation 0", "_0", _square(2, 2, 14, 14), order=[0, 2, 1, 3]),
    _annotation("Annotation 1", "_2", _square(6, 6, 10, 10)),
)
# test_001: the testing files' group names, with float coordinates.
TEST_001_XML = _asap(
    _annotation("_0", "Tumor", _square(0.5, 0.5, 8.5, 8.5)),
    _annotation("_1", "Exclusion", _square(2.5, 2.5, 4.5, 6.5)),
    _annotation("_2", "metastases", _square(10, 10, 14, 12)),
)


def _reference_label(name: str) -> str:
    return "Tumor" if int(name.split("_")[1]) % 2 else "Normal"


def make_camelyon16(
    root: Path,
    small_slide: Path,
    annotations: str = "lesion_annotations",
    reference: str = "testing/reference.csv",
) -> Path:
    """Every slide of the authors' split (plus two outside it) as copies of a 16 x 16 px slide
    (copies, not links: the sheet check refuses one file under two ids)."""
    folders = {"normal": "training/normal", "tumor": "training/tumor", "test": "testing/images"}
    for name in [*authors_split(), *NOT_IN_SPLIT]:
        target = root / folders[name.split("_")[0]] / f"{name}.tif"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(small_slide, target)
    rows = [
        f"{name},Tumor,Macro,Metastases"
        if _reference_label(name) == "Tumor"
        else f"{name},Normal,,"
        for name in (f"test_{n:03d}" for n in range(1, 131))
    ]
    (root / reference).parent.mkdir(parents=True, exist_ok=True)
    (root / reference).write_text("\n".join(rows) + "\n")
    xmls = {"training": {"tumor_001": TUMOR_001_XML}, "testing": {"test_001": TEST_001_XML}}
    for part, files in xmls.items():
        folder = root / part / annotations
        if annotations.endswith(".zip"):
            with zipfile.ZipFile(folder, "w") as archive:
                for name, text in files.items():
                    archive.writestr(f"lesion_annotations/{name}.xml", text)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (folder / f"{name}.xml").write_text(text)
    return root


@pytest.fixture
def camelyon16(tmp_path: Path, test_slides: Path) -> Path:
    return make_camelyon16(tmp_path / "CAMELYON16", test_slides / "small.svs")


def _shoelace(ring: list[list[float]]) -> float:
    points = np.asarray(ring, dtype=np.float64)
    x, y = points[:, 0], points[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def test_split_file_holds_the_authors_lists(repo_root: Path) -> None:
    split = authors_split()
    assert Counter(split.values()) == {"train": 216, "val": 54, "test": 129}
    text = (repo_root / "hnm" / "data" / "camelyon16_split.tsv").read_text()
    header, *rows = [line for line in text.splitlines() if not line.startswith("#")]
    assert header == "slide_id\tsplit"
    names = [row.split("\t")[0] for row in rows]
    assert len(names) == len(set(names)) == 399
    for name, part in split.items():
        prefix, number = name.split("_")
        assert number.isdigit() and len(number) == 3, name
        assert (prefix == "test") == (part == "test"), name
        assert prefix in ("normal", "tumor", "test"), name
    assert Counter(n.split("_")[0] for n, s in split.items() if s != "test") == {
        "normal": 159,
        "tumor": 111,
    }
    assert {name: split[name] for name in SPOT_CHECKS} == SPOT_CHECKS
    assert not set(NOT_IN_SPLIT) & set(split)


def test_split_file_is_package_data(repo_root: Path) -> None:
    """`pip install .` carries the split file (setuptools leaves out what package-data omits)."""
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["hnm"]
    assert any(fnmatch.fnmatch("data/camelyon16_split.tsv", pattern) for pattern in patterns)


def test_sheet_has_the_split_labels_and_annotations(
    camelyon16: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sheet = build_sheet(camelyon16, tmp_path / "c16.tsv")
    assert dict(zip(sheet["slide_id"], sheet["split"])) == authors_split()
    labels = dict(zip(sheet["slide_id"], sheet["label"]))
    assert labels["normal_155"] == "normal" and labels["tumor_066"] == "tumor"
    assert labels["test_001"] == "tumor" and labels["test_002"] == "normal"
    assert all(
        labels[f"test_{n:03d}"] == _reference_label(f"test_{n:03d}").lower()
        for n in range(1, 131)
        if n != 49
    )
    assert sheet.loc[sheet["slide_id"] == "tumor_002", "path"].item() == str(
        camelyon16 / "training" / "tumor" / "tumor_002.tif"
    )
    annotated = sheet[sheet["annotation"] != ""]
    assert set(annotated["slide_id"]) == {"tumor_001", "test_001"}
    assert Path(annotated["annotation"].iloc[0]).parent == tmp_path / "c16_annotations"
    log = caplog.text
    assert "not in the authors' split, left out: normal_086, test_049" in log
    # 111 + 64 tumor slides, of which tumor_001 and test_001 have an XML.
    assert "173 tumor slide(s) have no lesion annotation" in log
    assert f"test labels: {camelyon16 / 'testing' / 'reference.csv'}" in log
    # The project's own check of the sheet, slide dimensions and annotation extents included.
    checked = validate_sheet(tmp_path / "c16.tsv", slide_dimensions=level0_dimensions)
    assert len(checked) == 399
    assert checked.groupby("split")["label"].sum().to_dict() == {
        "train": 89,
        "val": 22,
        "test": 64,  # odd numbers are tumor here; test_049 is not in the split
    }


def test_geojson_cuts_the_exclusion_out(camelyon16: Path, tmp_path: Path) -> None:
    sheet = build_sheet(camelyon16, tmp_path / "c16.tsv", annotations_out=tmp_path / "gj")
    path = sheet.loc[sheet["slide_id"] == "tumor_001", "annotation"].item()
    assert path == str(tmp_path / "gj" / "tumor_001.geojson")
    document = json.loads(Path(path).read_text())
    (feature,) = document["features"]
    assert feature["properties"]["classification"]["name"] == "Tumor"
    outer, hole = feature["geometry"]["coordinates"]
    assert _shoelace(outer) - _shoelace(hole) == 144 - 16
    assert outer[0] == outer[-1] and sorted(map(tuple, outer[:-1])) == sorted(_square(2, 2, 14, 14))
    # The pipeline's reader: patches [x, x+4) x [y, y+4) at hand-placed corners.
    polygons = load_polygons(path, "Tumor")
    corners = np.array([[2, 2], [6, 6], [0, 0], [8, 4], [14, 14]])
    fractions = patch_tumor_fraction(polygons, corners, 4)
    np.testing.assert_allclose(fractions, [1.0, 0.0, 0.25, 0.75, 0.0])


def test_testing_groups_and_float_coordinates(camelyon16: Path, tmp_path: Path) -> None:
    sheet = build_sheet(camelyon16, tmp_path / "c16.tsv", class_name="Metastasis")
    path = sheet.loc[sheet["slide_id"] == "test_001", "annotation"].item()
    polygons = load_polygons_by_class(path, ["Metastasis", "Tumor"])
    assert polygons["Tumor"] == [] and len(polygons["Metastasis"]) == 2
    first, second = polygons["Metastasis"]
    assert len(first.holes) == 1 and second.holes == []
    # 8 x 8 minus 2 x 4, and 4 x 2: patches of side 1 at every integer corner, summed.
    grid = np.array([[x, y] for x in range(16) for y in range(16)], dtype=float)
    covered = patch_tumor_fraction(polygons["Metastasis"], grid, 1, resolution_level0=0.125)
    assert float(covered.sum()) == pytest.approx(64 - 8 + 8)


def test_zipped_annotations_and_the_evaluation_reference(
    tmp_path: Path, test_slides: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = make_camelyon16(
        tmp_path / "CAMELYON16",
        test_slides / "small.svs",
        annotations="lesion_annotations.zip",
        reference="testing/evaluation/reference.csv",
    )
    sheet = build_sheet(tmp_path, tmp_path / "sheet.tsv")  # the folder holding CAMELYON16/
    assert f"using {root} (the CAMELYON16 folder inside {tmp_path})" in caplog.text
    annotated = sheet.loc[sheet["annotation"] != "", "slide_id"]
    assert set(annotated) == {"tumor_001", "test_001"}
    assert f"lesion annotations of testing: {root / 'testing' / 'lesion_annotations.zip'}" in (
        caplog.text
    )
    assert f"test labels: {root / 'testing' / 'evaluation' / 'reference.csv'}" in caplog.text


def test_a_missing_slide_is_named(camelyon16: Path, tmp_path: Path) -> None:
    (camelyon16 / "training" / "tumor" / "tumor_066.tif").unlink()
    with pytest.raises(HnmError, match=r"1 slide\(s\) of the authors' split .*: tumor_066;"):
        build_sheet(camelyon16, tmp_path / "c16.tsv")
    assert not (tmp_path / "c16.tsv").exists()
    sheet = build_sheet(camelyon16, tmp_path / "c16.tsv", allow_missing=True)
    assert "tumor_066" not in set(sheet["slide_id"]) and len(sheet) == 398


def test_a_folder_of_another_layout_lists_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "training" / "normal").mkdir(parents=True)
    with pytest.raises(HnmError) as caught:
        build_sheet(tmp_path, tmp_path / "c16.tsv")
    missing = str(caught.value).split("missing: ")[1].split(". Expected")[0]
    assert missing == (
        "training/tumor/ (slide files); testing/images/ (slide files); testing/reference.csv or "
        "testing/evaluation/reference.csv (the test slides' labels)"
    )


def test_exclusions_that_do_not_fit_a_tumor_polygon_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = _asap(
        _annotation("a", "_1", _square(0, 0, 100, 100)),
        _annotation("b", "_2", _square(90, 40, 120, 60)),  # half out of a
        _annotation("c", "_2", _square(200, 200, 210, 210)),  # out of everything
        _annotation("d", "None", _square(300, 300, 310, 310)),
    )
    regions = read_asap(document.encode(), "x.xml")
    geojson = to_geojson(regions, "Tumor", "x.xml")
    assert [len(f["geometry"]["coordinates"]) for f in geojson["features"]] == [1, 1]
    assert "only partly overlaps the tumor polygon(s) a" in caplog.text
    assert "outside every tumor polygon" in caplog.text
    assert "1 ungrouped polygons (group 'None') taken as tumor" in caplog.text


def test_an_unknown_group_is_an_error() -> None:
    document = _asap(_annotation("a", "Necrosis", _square(0, 0, 10, 10)))
    with pytest.raises(HnmError, match="group 'Necrosis'"):
        read_asap(document.encode(), "x.xml")


def test_cli_writes_a_sheet_the_workflow_accepts(
    camelyon16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sheets" / "c16.tsv"
    assert main(["sheet", "camelyon16", "--data", str(camelyon16), "--out", str(out)]) == 0
    assert (
        out.is_file() and (tmp_path / "sheets" / "c16_annotations" / "tumor_001.geojson").exists()
    )
    normalised = tmp_path / "normalised.tsv"
    assert main(["check-sheet", "--sheet", str(out), "--out", str(normalised)]) == 0
    (camelyon16 / "testing" / "images" / "test_005.tif").unlink()
    assert main(["sheet", "camelyon16", "--data", str(camelyon16), "--out", str(out)]) == 2
    assert "hnm sheet: error: 1 slide(s) of the authors' split" in capsys.readouterr().err


def test_camelyon16_config_validates_on_top_of_the_paper(repo_root: Path) -> None:
    """Layered as config/camelyon16.yaml says (config.yaml, then paper.yaml, then it), with
    Snakemake's own merge and validation, as the workflow does."""
    from snakemake.utils import update_config, validate

    config: dict = {}
    for name in ("config.yaml", "paper.yaml", "camelyon16.yaml"):
        update_config(config, yaml.safe_load((repo_root / "config" / name).read_text()))
    merged = copy.deepcopy(config)
    validate(merged, schema=str(repo_root / "workflow" / "schemas" / "config.schema.yaml"))
    assert merged["evaluate"]["versus_classes"] == []
    assert merged["evaluate"]["annotation_class"] == "Tumor"
    assert merged["tile"]["target_mpp"] == 2.0 and merged["tile"]["patch_size"] == 224
    assert merged["mil"]["fixed_epoch"] == 199  # paper.yaml's keys survive the overlay
