"""Predicting new slides: the sheet of new slides, the settings, and scoring as training scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hnm.cli import main as cli_main
from hnm.core.errors import ConfigError, HnmError, SheetError
from hnm.io.h5io import FeatureWriter
from hnm.io.sheet import read_normalised_sheet, write_normalised_sheet
from hnm.mil.settings import MilSettings
from hnm.mil.train import train_mil
from hnm.predict.settings import PredictSettings
from hnm.predict.sheet import NEW_SPLIT, validate_new_slides
from hnm.predict.stage import predict_slides
from tests.mil_cohort import make_bags, write_cohort


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_new_slides_sheet_needs_ids_and_paths_only(tmp_path: Path) -> None:
    (tmp_path / "slides").mkdir()
    for name in ("a.svs", "b.svs"):
        (tmp_path / "slides" / name).write_bytes(b"x")
    sheet = tmp_path / "new.tsv"
    # label and split of a training sheet's rows are ignored: predicting never reads them
    sheet.write_text(
        "slide_id\tpath\tmpp\tlabel\nA\tslides/a.svs\t\ttumor\nB\tslides/b.svs\t0.25\t\n"
    )
    table = validate_new_slides(sheet)
    assert list(table["slide_id"]) == ["A", "B"]
    assert table["path"].tolist() == [str(tmp_path / "slides" / n) for n in ("a.svs", "b.svs")]
    assert table["mpp"].tolist()[1] == 0.25 and pd.isna(table["mpp"].tolist()[0])
    assert set(table["split"]) == {NEW_SPLIT} and table["label"].isna().all()
    # the normalised copy reads back as the viz stages read a sheet: labels unknown (NaN)
    write_normalised_sheet(table, tmp_path / "out.tsv")
    again = read_normalised_sheet(tmp_path / "out.tsv")
    assert again["label"].isna().all() and list(again["slide_id"]) == ["A", "B"]
    assert again["mpp"].iloc[1] == 0.25


def test_new_slides_sheet_lists_every_problem_with_its_row(tmp_path: Path) -> None:
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "link.svs").symlink_to(tmp_path / "a.svs")
    sheet = tmp_path / "new.csv"
    sheet.write_text(
        "slide_id,path,mpp\nA,a.svs,\nA,missing.svs,\nbad id,a.svs,400\nC,link.svs,\nD,,\n"
    )
    with pytest.raises(SheetError) as caught:
        validate_new_slides(sheet)
    text = str(caught.value)
    assert "(predict.sheet)" in text
    assert "row 3 (slide_id 'A'): duplicate slide_id, first used in row 2" in text
    assert "row 3 (slide_id 'A'): slide file not found" in text
    assert "row 4 (slide_id 'bad id'): slide_id must be" in text
    assert "row 4 (slide_id 'bad id'): mpp 400 um/px is outside" in text
    assert "row 5 (slide_id 'C'): the slide file" in text and "same file" in text
    assert "row 6 (slide_id 'D'): empty path" in text
    (tmp_path / "cols.tsv").write_text("id\tfile\nA\ta.svs\n")
    with pytest.raises(SheetError, match="missing column.s. slide_id, path; required: slide_id"):
        validate_new_slides(tmp_path / "cols.tsv")
    (tmp_path / "commas.tsv").write_text("slide_id,path\nA,a.svs\n")
    with pytest.raises(SheetError, match="header looks separated by commas"):
        validate_new_slides(tmp_path / "commas.tsv")


def test_predict_settings_name_the_output_folder() -> None:
    assert PredictSettings().out_dir() == "results/predict/predict"
    assert PredictSettings(sheet="/data/my slides (2).tsv").out_dir() == (
        "results/predict/my_slides__2_"
    )
    assert PredictSettings(sheet="x.tsv", name="batch-2").out_dir() == "results/predict/batch-2"
    with pytest.raises(ConfigError, match="name 'a/b' must match"):
        PredictSettings(name="a/b")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    bags = make_bags({"train": (4, 4), "val": (2, 2), "test": (3, 3)}, signal=4.0, seed=3)
    write_cohort(bags, root / "features", root / "sheet.tsv")
    train_mil(
        root / "sheet.tsv",
        sorted((root / "features").glob("*.h5")),
        root / "mil",
        None,
        MilSettings(epochs=3, select="best_val"),
        device="cpu",
    )
    return root


def new_sheet(root: Path, slides: list[str]) -> Path:
    """The test slides as new ones: blank label, split `new`."""
    sheet = pd.read_csv(root / "sheet.tsv", sep="\t", keep_default_na=False)
    sheet = sheet[sheet["slide_id"].isin(slides)].assign(label=None, split=NEW_SPLIT)
    path = root / f"new_{len(slides)}.tsv"
    write_normalised_sheet(sheet, path)
    return path


def test_new_slides_get_the_probabilities_and_scores_training_gave(trained: Path) -> None:
    slides = pd.read_parquet(trained / "mil" / "slides.parquet")
    test = slides[slides["split"] == "test"].set_index("slide_id")
    out = trained / "out"
    predictions = predict_slides(
        new_sheet(trained, list(test.index)),
        [trained / "features" / f"{s}.h5" for s in test.index],
        trained / "mil" / "model.pt",
        trained / "mil" / "metrics.json",
        out / "predictions.csv",
        out / "scores.parquet",
        out / "summary.json",
        device="cpu",
    ).set_index("slide_id")
    threshold = json.loads((trained / "mil" / "metrics.json").read_text())["threshold"]
    np.testing.assert_allclose(
        predictions["prob"], test.loc[predictions.index, "bag_prob"], atol=1e-6
    )
    assert (predictions["predicted"] == (predictions["prob"] >= threshold)).all()
    assert (predictions["threshold"] == threshold).all()
    assert pd.read_csv(out / "predictions.csv").shape == (len(test), 6)
    scores = pd.read_parquet(out / "scores.parquet")
    reference = pd.read_parquet(trained / "mil" / "scores" / "test.parquet")
    merged = scores.merge(reference, on=["slide_id", "idx"], suffixes=("", "_run"))
    assert len(merged) == len(reference) == len(scores)
    assert list(scores.columns) == list(reference.columns)
    np.testing.assert_allclose(merged["logit"], merged["logit_run"], atol=1e-5)
    assert (
        merged[["x", "y", "size"]].to_numpy() == merged[["x_run", "y_run", "size_run"]].to_numpy()
    ).all()


def test_a_failed_slide_is_listed_and_others_predicted(trained: Path, tmp_path: Path) -> None:
    sheet = pd.read_csv(new_sheet(trained, ["test_tumor_000"]), sep="\t", keep_default_na=False)
    failed = tmp_path / "broken.h5"
    with FeatureWriter(failed, 32, np.zeros((0, 2)), {"failed": True, "error": "bad tile"}):
        pass
    sheet = pd.concat([sheet, sheet.assign(slide_id="broken")])
    write_normalised_sheet(sheet, tmp_path / "sheet.tsv")
    status = cli_main(
        [
            "predict", "--sheet", str(tmp_path / "sheet.tsv"),
            "--features", str(trained / "features" / "test_tumor_000.h5"), str(failed),
            "--model", str(trained / "mil" / "model.pt"),
            "--mil-metrics", str(trained / "mil" / "metrics.json"),
            "--out-predictions", str(tmp_path / "p.csv"), "--out-scores", str(tmp_path / "s.pq"),
            "--out-summary", str(tmp_path / "summary.json"), "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    assert list(pd.read_csv(tmp_path / "p.csv")["slide_id"]) == ["test_tumor_000"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_slides"] == 2 and summary["n_predicted"] == 1
    assert "bad tile" in summary["excluded_slides"][0]["reason"]


def test_features_of_another_encoder_are_refused(trained: Path, tmp_path: Path) -> None:
    wide = tmp_path / "test_tumor_000.h5"
    with FeatureWriter(wide, 64, np.zeros((3, 2)), {}) as writer:
        writer.append(np.zeros((3, 64), dtype=np.float32))
    with pytest.raises(HnmError, match="features are 64-d but the MIL model .* takes 32-d"):
        predict_slides(
            new_sheet(trained, ["test_tumor_000"]),
            [wide],
            trained / "mil" / "model.pt",
            trained / "mil" / "metrics.json",
            tmp_path / "p.csv",
            tmp_path / "s.parquet",
            tmp_path / "summary.json",
            device="cpu",
        )
    with pytest.raises(HnmError, match="metrics.json is missing"):
        predict_slides(
            new_sheet(trained, ["test_tumor_000"]),
            [wide],
            trained / "mil" / "model.pt",
            tmp_path / "metrics.json",
            tmp_path / "p.csv",
            tmp_path / "s.parquet",
            tmp_path / "summary.json",
            device="cpu",
        )
