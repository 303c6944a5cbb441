"""Feature quality: the linear probe on cohorts whose answer is known, the MIL over seeds, and the
rounds.csv columns they fill."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

import hnm.mil.train
from hnm.cli import main as cli_main
from hnm.evaluate.mil_seeds import mil_seed_runs, spread
from hnm.evaluate.probe import linear_probe, sample_rows
from hnm.evaluate.report import PROBE_COLUMNS, RoundFiles, write_report
from hnm.evaluate.settings import EvaluateSettings
from hnm.io.h5io import FeatureWriter, files_by_slide, level0_tiles_attrs, write_tiles
from hnm.mil.settings import MilSettings
from tests.mil_cohort import make_bags, write_cohort

GRID = 8  # patches per side of a slide
STEP = 32  # level-0 px per patch
DIM = 6
TUMOR_COLUMNS = (0, 3)  # grid columns [start, stop) annotated Tumor on positive slides
MIMIC_COLUMNS = (5, 7)  # ... and Mimic on every annotated slide
# (slide id, split, label, annotated); two unannotated negatives are all "rest", the unannotated
# positive has unknown patch truth and is left out
SLIDES = [
    ("train_pos_0", "train", 1, True),
    ("train_pos_1", "train", 1, True),
    ("train_pos_2", "train", 1, True),
    ("train_pos_unannotated", "train", 1, False),
    ("train_neg_0", "train", 0, True),
    ("train_neg_1", "train", 0, False),
    ("train_neg_2", "train", 0, False),
    ("test_pos_0", "test", 1, True),
    ("test_pos_1", "test", 1, True),
    ("test_neg_0", "test", 0, True),
    ("test_neg_1", "test", 0, False),
]


def _box(columns: tuple[int, int], name: str) -> dict:
    x0, x1, y1 = columns[0] * STEP, columns[1] * STEP, GRID * STEP
    ring = [[x0, 0], [x1, 0], [x1, y1], [x0, y1], [x0, 0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": name}},
    }


class GridCohort:
    """Slides of GRID x GRID patches whose Tumor and Mimic columns are known; `mode` says how the
    features carry them (uniform noise in [-1, 1] on every feature, plus 3 on feature 0 for):
    separable: tumor; mimic_like_tumor: tumor and mimic; noise: nothing."""

    def __init__(self, root: Path, mode: str, seed: int = 0, annotate_train: bool = True) -> None:
        rng = np.random.default_rng(seed)
        column = np.tile(np.arange(GRID), GRID)
        coords = np.stack([column * STEP, np.repeat(np.arange(GRID), GRID) * STEP], 1)
        in_tumor = (column >= TUMOR_COLUMNS[0]) & (column < TUMOR_COLUMNS[1])
        in_mimic = (column >= MIMIC_COLUMNS[0]) & (column < MIMIC_COLUMNS[1])
        self.features: dict[str, np.ndarray] = {}
        self.tumor: dict[str, np.ndarray] = {}
        self.mimic: dict[str, np.ndarray] = {}
        rows = []
        for slide_id, split, label, annotated in SLIDES:
            tumor = in_tumor & bool(label)
            mimic = in_mimic & annotated
            x = rng.uniform(-1, 1, (len(coords), DIM))
            if mode == "separable":
                x[tumor, 0] += 3
            elif mode == "mimic_like_tumor":
                x[tumor | mimic, 0] += 3
            self.features[slide_id], self.tumor[slide_id], self.mimic[slide_id] = x, tumor, mimic
            with FeatureWriter(root / "features" / f"{slide_id}.h5", DIM, coords, {}) as writer:
                writer.append(x.astype(np.float32))
            write_tiles(
                root / "tiles" / f"{slide_id}.h5",
                coords,
                level0_tiles_attrs(slide_id, f"{slide_id}.tiff", STEP),
            )
            annotation = ""
            if annotated and (annotate_train or split != "train"):
                boxes = [_box(MIMIC_COLUMNS, "Mimic")] + ([_box(TUMOR_COLUMNS, "Tumor")] * label)
                path = root / "annotations" / f"{slide_id}.geojson"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"type": "FeatureCollection", "features": boxes}))
                annotation = str(path)
            rows.append((slide_id, f"{slide_id}.tiff", label, split, "", annotation))
        self.sheet = pd.DataFrame(
            rows, columns=["slide_id", "path", "label", "split", "mpp", "annotation"]
        )
        self.sheet_path = root / "sheet_eval.tsv"
        self.sheet.to_csv(self.sheet_path, sep="\t", index=False)
        self.feature_files = files_by_slide(sorted((root / "features").glob("*.h5")), "features")
        self.tiles_files = files_by_slide(sorted((root / "tiles").glob("*.h5")), "tiles")

    def probe(self, settings: EvaluateSettings | None = None, seed: int = 0) -> dict:
        return linear_probe(
            self.sheet,
            self.feature_files,
            self.tiles_files,
            settings or EvaluateSettings(),
            seed,
            threads=1,
        )


@pytest.fixture(scope="module")
def separable(tmp_path_factory: pytest.TempPathFactory) -> GridCohort:
    return GridCohort(tmp_path_factory.mktemp("separable"), "separable")


def test_tumor_separable_along_one_feature_gives_auc_one(separable: GridCohort) -> None:
    result = separable.probe()
    assert result["reason"] is None and result["converged"]
    assert result["auc"] == 1.0
    assert result["versus"]["Mimic"]["auc"] == 1.0
    # 3 annotated positive train slides x 3 tumor columns x 8 rows; 6 usable train slides
    assert result["train"]["n_tumour_patches"] == 72
    assert result["train"]["n_slides"] == 6 and result["train"]["n_patches"] == 6 * GRID * GRID
    assert result["train"]["skipped"] == ["train_pos_unannotated (positive without annotation)"]
    # tumor: 2 slides x 3 columns x 8 rows; mimic: 3 annotated test slides x 2 columns x 8 rows
    assert result["versus"]["Mimic"]["n_tumour_patches"] == 48
    assert result["versus"]["Mimic"]["n_class_patches"] == 48
    assert result["test"]["n_patches"] == 4 * GRID * GRID


def test_probe_is_the_float64_fit_on_the_labelled_train_patches(tmp_path: Path) -> None:
    """Against a reference built by hand from the arrays the cohort was made of: the same train
    patches and labels, scikit-learn in float64, scored on every test patch."""
    cohort = GridCohort(tmp_path, "mimic_like_tumor", seed=3)
    used = [
        s for s, split, label, annotated in SLIDES if split == "train" and (annotated or not label)
    ]
    x = np.concatenate([cohort.features[s].astype(np.float32).astype(np.float64) for s in used])
    y = np.concatenate([cohort.tumor[s] for s in used])
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=0.5, max_iter=1000, class_weight="balanced").fit(
        scaler.transform(x), y
    )
    tests = [s for s, split, *_ in SLIDES if split == "test"]
    test_x = np.concatenate([cohort.features[s].astype(np.float32) for s in tests])
    scores = model.decision_function(scaler.transform(test_x.astype(np.float64)))
    truth = np.concatenate([cohort.tumor[s] for s in tests])
    mimic = np.concatenate([cohort.mimic[s] for s in tests])
    result = cohort.probe(EvaluateSettings(probe_c=0.5))
    assert result["auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    # mimic patches look like tumor: against them alone the probe is near chance
    pair = truth | mimic
    assert result["versus"]["Mimic"]["auc"] == pytest.approx(
        roc_auc_score(truth[pair], scores[pair]), abs=1e-12
    )
    assert result["versus"]["Mimic"]["auc"] < 0.75 < result["auc"]


def test_pure_noise_features_give_auc_near_half(tmp_path: Path) -> None:
    result = GridCohort(tmp_path, "noise", seed=5).probe()
    assert result["reason"] is None
    assert 0.35 < result["auc"] < 0.65
    assert 0.3 < result["versus"]["Mimic"]["auc"] < 0.7


def test_sample_is_uniform_bounded_and_the_same_every_time() -> None:
    counts = [64, 0, 10, 30]
    rows = sample_rows(counts, 40, seed=7)
    assert sum(len(r) for r in rows) == 40 and len(rows[1]) == 0
    expected = np.sort(np.random.default_rng(7).choice(104, size=40, replace=False))
    got = np.concatenate([r + offset for r, offset in zip(rows, [0, 64, 64, 74])])
    assert np.array_equal(got, expected)
    assert all(
        np.all(np.diff(r) > 0) and (len(r) == 0 or r.max() < n) for r, n in zip(rows, counts)
    )
    assert [list(r) for r in sample_rows(counts, 500, seed=7)] == [list(range(n)) for n in counts]


def test_probe_subsample_is_fixed_by_the_seed(separable: GridCohort) -> None:
    small = EvaluateSettings(probe_max_patches=100)
    first, again, other = separable.probe(small), separable.probe(small), separable.probe(small, 1)
    assert first["train"]["n_patches"] == 100
    assert first["train"]["n_patches_available"] == 6 * GRID * GRID
    assert first["train"]["n_tumour_patches"] == again["train"]["n_tumour_patches"]
    assert first["auc"] == again["auc"]
    assert other["train"]["n_tumour_patches"] != first["train"]["n_tumour_patches"]


def test_no_annotated_tumor_in_train_gives_empty_columns_and_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = GridCohort(tmp_path, "separable", annotate_train=False).probe()
    assert result["auc"] is None
    assert result["versus"] == {"Mimic": {"auc": None}}
    assert "no patch of annotated class 'Tumor'" in result["reason"]
    assert "no patch of annotated class" in caplog.text
    columns = _report_row(tmp_path, {"probe": result, "mil_seeds": None})
    assert all(np.isnan(columns[name]) for name in [*PROBE_COLUMNS, "probe_test_auc_vs_mimic"])


def _report_row(folder: Path, quality: dict | None) -> pd.Series:
    """rounds.csv's one row for a round whose MIL and evaluation files are minimal."""
    (folder / "mil.json").write_text("{}")
    (folder / "eval.json").write_text(json.dumps({"slide": {"auc": 0.5}}))
    (folder / "predictions.csv").write_text("slide_id\n")
    probe = None
    if quality is not None:
        probe = folder / "probe.json"
        probe.write_text(json.dumps(quality))
    files = RoundFiles(folder / "mil.json", folder / "eval.json", probe=probe)
    out = folder / "report"
    out.mkdir(exist_ok=True)
    write_report(
        [files],
        folder / "predictions.csv",
        out / "metrics.json",
        out / "predictions.csv",
        out / "rounds.csv",
    )
    return pd.read_csv(out / "rounds.csv").iloc[0]


def test_rounds_csv_columns_from_probe_json(tmp_path: Path) -> None:
    quality = {
        "probe": {"auc": 0.97, "versus": {"Mimic": {"auc": 0.81}, "Fat cells": {"auc": 0.99}}},
        "mil_seeds": {
            "test_patch_auc": {"n": 3, "mean": 0.8, "sd": 0.1},
            "test_slide_auc": {"n": 3, "mean": 0.75, "sd": 0.05},
        },
    }
    row = _report_row(tmp_path, quality)
    assert row["probe_test_auc"] == 0.97
    assert row["probe_test_auc_vs_mimic"] == 0.81
    assert row["probe_test_auc_vs_fat_cells"] == 0.99
    assert row["mil_seeds_test_patch_auc_mean"] == 0.8
    assert row["mil_seeds_test_patch_auc_sd"] == 0.1
    assert row["mil_seeds_test_slide_auc_mean"] == 0.75
    assert row["mil_seeds_test_slide_auc_sd"] == 0.05
    # no annotations, no probe file: the columns are there, empty
    (tmp_path / "none").mkdir()
    without = _report_row(tmp_path / "none", None)
    assert all(np.isnan(without[name]) for name in PROBE_COLUMNS)
    assert "probe_test_auc_vs_mimic" not in without.index


def test_spread_is_mean_and_sample_sd_hand_computed() -> None:
    # mean (0.9 + 0.7 + 0.8) / 3 = 0.8; sd sqrt((0.01 + 0.01 + 0) / (3 - 1)) = 0.1
    result = spread([0.9, 0.7, 0.8])
    assert result["n"] == 3
    assert result["mean"] == pytest.approx(0.8, abs=1e-12)
    assert result["sd"] == pytest.approx(0.1, abs=1e-12)
    # undefined values (a split without a class) are left out; one value has no sd
    assert spread([0.6, None, 1.0]) == {
        "n": 2,
        "mean": pytest.approx(0.8),
        "sd": pytest.approx(np.sqrt(0.08)),
    }
    assert spread([0.5, None]) == {"n": 1, "mean": 0.5, "sd": None}
    assert spread([]) == {"n": 0, "mean": None, "sd": None}


class MilCohort:
    """tests.mil_cohort's synthetic bags, with tiles files and GeoJSON boxes over the tumour
    patches of the positive slides, so the MILs have a test patch AUC."""

    def __init__(self, root: Path) -> None:
        bags = make_bags({"train": (4, 4), "val": (2, 2), "test": (3, 3)}, dim=16, signal=1.5)
        self.sheet = root / "sheet.tsv"
        sheet = write_cohort(bags, root / "features", self.sheet)
        self.features = sorted((root / "features").glob("*.h5"))
        side = 224  # write_cohort's patches: 224 px at 0.5 um/px, one row along x
        annotations = []
        for bag in bags:
            coords = np.stack([np.arange(len(bag.features)) * side, np.zeros(len(bag.features))], 1)
            write_tiles(
                root / "tiles" / f"{bag.slide_id}.h5",
                coords,
                level0_tiles_attrs(bag.slide_id, "x", side),
            )
            boxes = [
                {
                    "type": "Feature",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [
                            [[x, 0], [x + side, 0], [x + side, side], [x, side], [x, 0]]
                        ],
                    },
                    "properties": {"classification": {"name": "Tumor"}},
                }
                for x in coords[bag.tumour, 0].tolist()
            ]
            path = root / "annotations" / f"{bag.slide_id}.geojson"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps({"type": "FeatureCollection", "features": boxes}))
            annotations.append(str(path))
        self.eval_sheet = sheet.assign(annotation=annotations)
        self.eval_sheet_path = root / "sheet_eval.tsv"
        self.eval_sheet.to_csv(self.eval_sheet_path, sep="\t", index=False)
        self.tiles = sorted((root / "tiles").glob("*.h5"))


@pytest.fixture(scope="module")
def mil_cohort(tmp_path_factory: pytest.TempPathFactory) -> MilCohort:
    return MilCohort(tmp_path_factory.mktemp("mil_seeds"))


MIL = MilSettings(epochs=4, checkpoint_every=2, seed=0)
OWN = {"slide": {"auc": 0.75}, "patch": {"test": {"overall": {"auc": 0.9}}}}


def test_each_extra_seed_trains_the_same_mil_with_only_its_seed_changed(
    mil_cohort: MilCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: dict[int, dict] = {}
    real = hnm.mil.train.train_mil

    def keep(sheet, features, out, checkpoint_dir, settings, device, threads=0):  # noqa: ANN001
        metrics = real(sheet, features, out, checkpoint_dir, settings, device, threads=threads)
        shutil.copytree(out, tmp_path / f"seed{settings.seed}")
        trained[settings.seed] = {"settings": settings, "checkpoints": checkpoint_dir}
        return metrics

    monkeypatch.setattr(hnm.mil.train, "train_mil", keep)
    previous = torch.get_num_threads()
    result = mil_seed_runs(
        mil_cohort.sheet,
        mil_cohort.features,
        mil_cohort.eval_sheet,
        files_by_slide(mil_cohort.tiles, "tiles"),
        OWN,
        MIL,
        EvaluateSettings(versus_classes=[], mil_seeds=[0, 1, 2]),  # 0 is the round's own
        device="cpu",
        threads=1,
    )
    assert torch.get_num_threads() == previous
    assert sorted(trained) == [1, 2]
    for seed, call in trained.items():
        assert call["settings"] == replace(MIL, seed=seed) and call["checkpoints"] is None
    scores = [pd.read_parquet(tmp_path / f"seed{s}" / "scores" / "test.parquet") for s in (1, 2)]
    assert not np.allclose(scores[0]["score"], scores[1]["score"])
    assert result["seeds"] == [0, 1, 2]
    assert result["runs"][0] == {
        "seed": 0,
        "source": "round",
        "test_patch_auc": 0.9,
        "test_slide_auc": 0.75,
    }
    for metric in ("test_patch_auc", "test_slide_auc"):
        values = [run[metric] for run in result["runs"]]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert result[metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert result[metric]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    # the extra runs are scored as `hnm evaluate` scores a MIL: here from the kept outputs
    slides = pd.read_parquet(tmp_path / "seed1" / "slides.parquet")
    test = slides[slides["split"] == "test"]
    assert result["runs"][1]["test_slide_auc"] == pytest.approx(
        roc_auc_score(test["label"], test["bag_prob"])
    )


def test_no_mil_seeds_is_off(mil_cohort: MilCohort) -> None:
    settings = EvaluateSettings(mil_seeds=[])
    assert (
        mil_seed_runs(
            mil_cohort.sheet, mil_cohort.features, mil_cohort.eval_sheet, {}, OWN, MIL, settings
        )
        is None
    )


def test_mil_seeds_must_be_distinct_non_negative_integers() -> None:
    from hnm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="must not repeat"):
        EvaluateSettings(mil_seeds=[1, 1])
    with pytest.raises(ConfigError, match="integers >= 0"):
        EvaluateSettings(mil_seeds=[-1])


def test_probe_command_writes_probe_json(mil_cohort: MilCohort, tmp_path: Path) -> None:
    evaluation = tmp_path / "metrics.json"
    evaluation.write_text(json.dumps(OWN))
    out = tmp_path / "eval" / "probe.json"
    code = cli_main(
        [
            "probe", "--sheet", str(mil_cohort.sheet), "--eval-sheet",
            str(mil_cohort.eval_sheet_path), "--features", *map(str, mil_cohort.features),
            "--tiles", *map(str, mil_cohort.tiles), "--eval-metrics", str(evaluation),
            "--out", str(out), "--device", "cpu", "--threads", "1", "--epochs", "3",
            "--versus-classes", "[]", "--mil-seeds", "[5]",
        ]
    )  # fmt: skip
    assert code == 0
    written = json.loads(out.read_text())
    assert 0.5 < written["probe"]["auc"] <= 1.0  # signal 1.5 along one direction: separable-ish
    assert written["probe"]["train"]["n_slides"] == 8
    assert written["mil_seeds"]["seeds"] == [0, 5]
    assert written["mil_seeds"]["test_slide_auc"]["n"] == 2
    evaluation.unlink()
    assert cli_main(["probe", *_args(mil_cohort, evaluation, out)]) == 2


def _args(cohort: MilCohort, evaluation: Path, out: Path) -> list[str]:
    return [
        "--sheet", str(cohort.sheet), "--eval-sheet", str(cohort.eval_sheet_path),
        "--features", *map(str, cohort.features), "--tiles", *map(str, cohort.tiles),
        "--eval-metrics", str(evaluation), "--out", str(out), "--device", "cpu",
    ]  # fmt: skip


def test_timings_go_to_timing_csv_not_rounds_csv(tmp_path: Path) -> None:
    """rounds.csv holds results only, so a reproducible run repeats it bit for bit; what each
    round cost (never the same twice) is in timing.csv."""
    (tmp_path / "mil.json").write_text(
        json.dumps(
            {"extraction": {"seconds": 2.0, "patches": 10}, "timing": {"epoch_seconds_mean": 0.5}}
        )
    )
    (tmp_path / "eval.json").write_text(json.dumps({"slide": {"auc": 0.5}}))
    (tmp_path / "predictions.csv").write_text("slide_id\n")
    out = tmp_path / "report"
    out.mkdir()
    write_report(
        [RoundFiles(tmp_path / "mil.json", tmp_path / "eval.json")],
        tmp_path / "predictions.csv",
        out / "metrics.json",
        out / "predictions.csv",
        out / "rounds.csv",
        out_timing=out / "timing.csv",
    )
    rounds = pd.read_csv(out / "rounds.csv")
    assert not [c for c in rounds.columns if "second" in c]
    timing = pd.read_csv(out / "timing.csv").iloc[0]
    assert timing["extraction_seconds"] == 2.0 and timing["extraction_patches_per_second"] == 5.0
    assert timing["mil_epoch_seconds"] == 0.5 and timing["round"] == 0
