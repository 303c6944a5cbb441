"""Metrics against scikit-learn and hand counts; evaluation applies the VAL threshold to test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from hnm.cli import main as cli_main
from hnm.evaluate.evaluate import MilFiles, evaluate
from hnm.evaluate.metrics import (
    average_precision,
    best_f1,
    binary_metrics,
    choose_threshold,
    roc_auc,
)
from hnm.io.h5io import write_tiles

LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0])
SCORES = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.55, 0.5, 0.5, 0.3, 0.2, 0.2, 0.1])  # with ties


def test_auc_and_auprc_match_scikit_learn_with_ties() -> None:
    assert roc_auc(LABELS, SCORES) == pytest.approx(sk.roc_auc_score(LABELS, SCORES))
    assert average_precision(LABELS, SCORES) == pytest.approx(
        sk.average_precision_score(LABELS, SCORES)
    )
    rng = np.random.default_rng(0)
    y, s = rng.random(500) < 0.3, np.round(rng.random(500), 2)
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s))


def test_best_f1_matches_the_precision_recall_curve() -> None:
    precision, recall, _ = sk.precision_recall_curve(LABELS, SCORES)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nanmax(2 * precision * recall / (precision + recall))
    value, threshold = best_f1(LABELS, SCORES)
    assert value == pytest.approx(expected)
    assert sk.f1_score(LABELS, SCORES >= threshold) == pytest.approx(value)


def test_binary_metrics_match_scikit_learn() -> None:
    predicted = SCORES >= 0.55
    result = binary_metrics(LABELS, predicted)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(LABELS, predicted))
    assert result["precision"] == pytest.approx(sk.precision_score(LABELS, predicted))
    assert result["recall"] == pytest.approx(sk.recall_score(LABELS, predicted))
    assert result["f1"] == pytest.approx(sk.f1_score(LABELS, predicted))
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (3, 3, 4, 2)


def test_undefined_metrics_are_none() -> None:
    assert roc_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert average_precision([0, 0], [0.1, 0.2]) is None
    assert best_f1([0, 0], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.3])


def test_threshold_by_f1_and_by_youden_hand_computed() -> None:
    labels = [1, 0, 0, 1, 0, 0, 0, 0]
    probs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    # cut >= 0.9: F1 2/3, J 0.5; >= 0.6: F1 4/6 = 2/3, J 1 - 2/6 = 2/3. F1 ties keep the higher cut.
    threshold, value = choose_threshold(labels, probs, "f1")
    assert (threshold, value) == pytest.approx((0.85, 2 / 3))
    threshold, value = choose_threshold(labels, probs, "youden")
    assert (threshold, value) == pytest.approx((0.55, 2 / 3))
    # calling everything positive is best (F1 4/5 vs 2/3): the threshold is the lowest probability
    assert choose_threshold([1, 0, 1], [0.9, 0.5, 0.1], "f1") == pytest.approx((0.1, 0.8))


def _write_geojson(
    path: Path, *box: float, boxes: dict[str, tuple[float, float, float, float]] | None = None
) -> str:
    """A GeoJSON of rectangles: `box` (x0, y0, x1, y1) is Tumor; `boxes` maps other classes."""
    named = {"Tumor": tuple(box), **(boxes or {})} if box else dict(boxes or {})
    features = []
    for name, (x0, y0, x1, y1) in named.items():
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"classification": {"name": name}},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(path)


@pytest.fixture
def mil_run(tmp_path: Path) -> dict[str, Any]:
    """A hand-made hnm mil output: val chose threshold 0.35; test slides around it."""
    mil, tiles = tmp_path / "mil", tmp_path / "tiles"
    (mil / "scores").mkdir(parents=True)
    slides = pd.DataFrame(
        [
            ("v_pos", "val", 1, 0.0, 0.40),
            ("v_neg", "val", 0, 0.0, 0.30),
            ("t_pos", "test", 1, 0.0, 0.36),
            ("t_pos2", "test", 1, 0.0, 0.34),
            ("t_neg", "test", 0, 0.0, 0.90),
            ("t_neg2", "test", 0, 0.0, 0.10),
        ],
        columns=["slide_id", "split", "label", "bag_logit", "bag_prob"],
    )
    slides.to_parquet(mil / "slides.parquet")
    (mil / "metrics.json").write_text(
        json.dumps(
            {
                "threshold": 0.35,
                "threshold_method": "f1",
                "selected_epoch": 3,
                "aggregator": "dsmil",
            }
        )
    )
    patch_scores = {
        "t_pos": [0.9, 0.6, 0.7, 0.1],
        "t_pos2": [0.5, 0.5],
        "t_neg": [0.8, 0.2],
        "t_neg2": [],
        "v_pos": [0.3, 0.4],
        "v_neg": [0.1],
    }
    for split in ("train", "val", "test"):
        rows = [
            (s, i, 0.0, v)
            for s, values in patch_scores.items()
            if s[0] == split[0]
            for i, v in enumerate(values)
        ]
        pd.DataFrame(rows, columns=["slide_id", "idx", "logit", "score"]).to_parquet(
            mil / "scores" / f"{split}.parquet"
        )
    for slide_id, values in patch_scores.items():
        coords = np.array([[100 * i, 0] for i in range(len(values))], dtype=np.int64)
        write_tiles(tiles / f"{slide_id}.h5", coords, {"slide_id": slide_id, "step_level0": 100})
    annotation = {
        "t_pos": _write_geojson(tmp_path / "t_pos.geojson", -10, -10, 210, 110),  # patches 0, 1
        "v_pos": _write_geojson(tmp_path / "v_pos.geojson", -10, -10, 110, 110),  # patch 0
    }
    sheet = pd.DataFrame(
        [
            {
                "slide_id": s,
                "path": str(tmp_path / f"{s}.svs"),
                "label": int(lab),
                "split": split,
                "mpp": "",
                "annotation": annotation.get(s, ""),
            }
            for s, split, lab in slides[["slide_id", "split", "label"]].itertuples(index=False)
        ]
        + [
            {
                "slide_id": "t_lost",
                "path": "x",
                "label": 0,
                "split": "test",
                "mpp": "",
                "annotation": "",
            }
        ]
    )
    sheet.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    return {
        "mil": MilFiles(
            mil / "metrics.json",
            mil / "slides.parquet",
            {split: mil / "scores" / f"{split}.parquet" for split in ("train", "val", "test")},
        ),
        "tiles_dir": tiles,
        "tiles": sorted(tiles.glob("*.h5")),
        "sheet": tmp_path / "sheet.tsv",
        "root": tmp_path,
    }


def test_evaluate_applies_the_val_threshold_and_scores_patches(mil_run: dict[str, Any]) -> None:
    out, predictions = mil_run["root"] / "eval.json", mil_run["root"] / "pred.csv"
    metrics = evaluate(mil_run["sheet"], mil_run["mil"], mil_run["tiles"], out, predictions)
    slide = metrics["slide"]
    # test probs 0.36, 0.34 (tumour) and 0.90, 0.10 (normal) at threshold 0.35 -> 1, 0, 1, 0
    assert metrics["threshold"] == 0.35
    assert (slide["tp"], slide["fn"], slide["fp"], slide["tn"]) == (1, 1, 1, 1)
    assert slide["accuracy"] == 0.5 and slide["precision"] == 0.5 and slide["recall"] == 0.5
    assert slide["auc"] == pytest.approx(0.5)
    assert slide["not_scored"] == ["t_lost"]

    table = pd.read_csv(predictions)
    assert list(table.columns) == ["slide_id", "split", "label", "prob", "predicted", "threshold"]
    assert (table["threshold"] == 0.35).all()
    assert dict(zip(table["slide_id"], table["predicted"])) == {
        "v_pos": 1,
        "v_neg": 0,
        "t_pos": 1,
        "t_pos2": 0,
        "t_neg": 1,
        "t_neg2": 0,
    }

    assert set(metrics["patch"]) == {"val", "test"}  # train has no annotation
    test = metrics["patch"]["test"]
    # overall: truth 1 1 0 0 | 0 0 (t_neg), scores .9 .6 .7 .1 | .8 .2; t_pos2 has no annotation
    assert test["overall"]["n_patches"] == 6 and test["overall"]["n_tumour_patches"] == 2
    assert test["overall"]["auc"] == pytest.approx(6 / 8)
    assert test["overall"]["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert test["overall"]["best_f1"] == pytest.approx(2 / 3)
    # positive slides only: truth 1 1 0 0, scores .9 .6 .7 .1
    assert test["positive_slides"]["auc"] == pytest.approx(3 / 4)
    assert test["positive_slides"]["auprc"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert test["positive_slides"]["best_f1"] == pytest.approx(0.8)
    assert any("t_pos2" in s for s in test["skipped"])
    assert metrics["patch"]["val"]["positive_slides"]["auc"] == 0.0  # .3 (tumour) < .4
    assert json.loads(out.read_text()) == json.loads(json.dumps(metrics))


def test_tumor_against_another_annotated_class(mil_run: dict[str, Any]) -> None:
    """Mimic boxes over t_pos patch 2 (score .7) and t_neg patch 0 (.8); tumor is t_pos 0, 1
    (.9, .6): of the 4 tumor-mimic pairs, .9 wins twice and .6 loses twice -> AUC 0.5."""
    root = mil_run["root"]
    sheet = pd.read_csv(mil_run["sheet"], sep="\t", keep_default_na=False)
    files = {
        "t_pos": _write_geojson(
            root / "t_pos2.geojson", -10, -10, 210, 110, boxes={"Mimic": (190, -10, 310, 110)}
        ),
        "t_neg": _write_geojson(root / "t_neg.geojson", boxes={"Mimic": (-10, -10, 110, 110)}),
    }
    sheet["annotation"] = [files.get(s, a) for s, a in zip(sheet["slide_id"], sheet["annotation"])]
    sheet.to_csv(mil_run["sheet"], sep="\t", index=False)
    metrics = evaluate(
        mil_run["sheet"],
        mil_run["mil"],
        mil_run["tiles"],
        root / "e.json",
        root / "p.csv",
        versus_classes=["Mimic", "Necrosis"],
    )
    test = metrics["patch"]["test"]
    assert test["overall"]["auc"] == pytest.approx(6 / 8)  # the Mimic boxes change nothing here
    assert test["versus"]["Mimic"] == {"n_tumour_patches": 2, "n_class_patches": 2, "auc": 0.5}
    assert test["versus"]["Necrosis"]["auc"] is None  # no such region: undefined, not an error
    assert metrics["patch"]["val"]["versus"]["Mimic"]["n_class_patches"] == 0


def test_evaluate_cli_and_its_errors(mil_run: dict[str, Path], capsys) -> None:
    args = [
        "evaluate",
        "--sheet",
        str(mil_run["sheet"]),
        "--mil-metrics",
        str(mil_run["mil"].metrics),
        "--mil-slides",
        str(mil_run["mil"].slides),
        "--val-scores",
        str(mil_run["mil"].scores["val"]),
        "--test-scores",
        str(mil_run["mil"].scores["test"]),
        "--tiles",
        *map(str, mil_run["tiles"]),
        "--out",
        str(mil_run["root"] / "m.json"),
        "--predictions",
        str(mil_run["root"] / "p.csv"),
        "--split",
        "val",
    ]
    assert cli_main(args) == 0
    assert json.loads((mil_run["root"] / "m.json").read_text())["slide"]["n_slides"] == 2
    (mil_run["tiles_dir"] / "t_pos.h5").unlink()
    assert cli_main(args) == 2
    assert "t_pos" in capsys.readouterr().err
    Path(mil_run["mil"].metrics).unlink()
    assert cli_main(args) == 2
    assert "run hnm mil first" in capsys.readouterr().err


def test_evaluate_does_not_import_torch(repo_root: Path) -> None:
    """The evaluate rule runs in the report env, which has no torch."""
    code = "import sys, hnm.commands.evaluate, hnm.evaluate.evaluate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True)
