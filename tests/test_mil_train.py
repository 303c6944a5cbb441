"""MIL training end to end on synthetic feature cohorts: learning, selection, outputs, resume."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hnm.cli import main as cli_main
from hnm.core.errors import ConfigError, HnmError
from hnm.evaluate.metrics import choose_threshold, roc_auc
from hnm.io.h5io import FeatureWriter
from hnm.mil.dsmil_reference import ReferenceDSMIL
from hnm.mil.settings import MilSettings
from hnm.mil.train import advance_schedule, class_weights, load_model, new_run, train_mil
from tests.mil_cohort import SyntheticBag, make_bags, write_cohort

COUNTS = {"train": (12, 12), "val": (6, 6), "test": (8, 8)}
FAST = MilSettings(epochs=30, lr=2e-3, select="best_val", checkpoint_every=2)


class FeatureCohort:
    def __init__(self, root: Path, bags: list[SyntheticBag]) -> None:
        self.root = root
        self.bags = {bag.slide_id: bag for bag in bags}
        self.features = root / "features"
        self.sheet = root / "sheet.tsv"
        write_cohort(bags, self.features, self.sheet)

    def train(self, name: str, settings: MilSettings, **kwargs) -> tuple[Path, dict]:
        out = self.root / name
        metrics = train_mil(
            self.sheet,
            sorted(self.features.glob("*.h5")),
            out,
            kwargs.pop("checkpoint_dir", None),
            settings,
            device="cpu",
            **kwargs,
        )
        return out, metrics


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny bags: with several jobs sharing 2 cores, torch's thread pool costs ~20x in waits."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    return FeatureCohort(tmp_path_factory.mktemp("mil"), make_bags(COUNTS, signal=4.0, seed=1))


@pytest.fixture(scope="module")
def ranked(cohort: FeatureCohort) -> tuple[Path, dict]:
    return cohort.train("ranked", FAST)


def top_k_separation(out: Path, split: str = "test", k: int = 10) -> float:
    """mean over positive bags of their top-K logit mean, minus the same over negative bags."""
    scores = pd.read_parquet(out / "scores" / f"{split}.parquet")
    labels = pd.read_parquet(out / "slides.parquet").set_index("slide_id")["label"]
    top = scores.groupby("slide_id")["logit"].apply(
        lambda x: np.sort(x.to_numpy())[::-1][:k].mean()
    )
    label = labels.loc[top.index]
    return float(top[label == 1].mean() - top[label == 0].mean())


def test_training_separates_held_out_slides_and_patches(cohort: FeatureCohort, ranked) -> None:
    out, metrics = ranked
    slides = pd.read_parquet(out / "slides.parquet")
    assert list(slides.columns) == ["slide_id", "split", "label", "bag_logit", "bag_prob"]
    test = slides[slides["split"] == "test"]
    assert len(test) == 16
    assert roc_auc(test["label"], test["bag_prob"]) > 0.95

    scores = pd.read_parquet(out / "scores" / "test.parquet")
    assert list(scores.columns) == ["slide_id", "idx", "logit", "score", "x", "y", "size"]
    # each patch's level-0 position is the feature file's coords row `idx`; the side in level-0 px
    assert (scores["x"] == scores["idx"] * 224).all() and (scores["y"] == 0).all()
    assert (scores["size"] == 224).all()
    truth = np.concatenate(
        [
            cohort.bags[s].tumour[group["idx"].to_numpy()]
            for s, group in scores.groupby("slide_id", sort=False)
        ]
    )
    ordered = pd.concat([group for _, group in scores.groupby("slide_id", sort=False)])
    assert roc_auc(truth, ordered["score"]) > 0.9
    assert np.allclose(
        scores["score"], 1 / (1 + np.exp(-scores["logit"].astype(np.float64))), atol=1e-6
    )

    # every patch of every slide of every split is scored, indexed by its row in the feature file
    for split in ("train", "val", "test"):
        frame = pd.read_parquet(out / "scores" / f"{split}.parquet")
        for slide_id, group in frame.groupby("slide_id"):
            assert group["idx"].tolist() == list(range(len(cohort.bags[slide_id].features)))
        assert set(frame["slide_id"]) == {s for s, b in cohort.bags.items() if b.split == split}

    epochs = pd.read_csv(out / "epochs.csv")
    assert list(epochs.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_auc",
        "val_f1",
        "val_f1_youden",
        "lr",
        "seconds",
    ]
    assert epochs["epoch"].tolist() == list(range(30))
    # the authors' gate value: the best per-epoch val F1, each at that epoch's own Youden point
    assert metrics["val"]["best_epoch_f1"] == pytest.approx(epochs["val_f1_youden"].max())
    assert metrics["selection"]["metric_used"] == "auc"
    assert 0 <= metrics["selected_epoch"] < 30
    assert metrics["val"]["f1"] is not None and 0 < metrics["threshold"] < 1
    assert json.loads((out / "metrics.json").read_text())["threshold"] == metrics["threshold"]
    val = slides[slides["split"] == "val"]  # the threshold is chosen on validation, by F1
    assert metrics["threshold"] == choose_threshold(val["label"], val["bag_prob"], "f1")[0]

    # model.pt holds the SELECTED model: it reproduces the written bag logits
    model = load_model(out / "model.pt")
    bag = cohort.bags[test["slide_id"].iloc[0]]
    with torch.no_grad():
        logit, _ = model(torch.from_numpy(bag.features))
    assert logit.item() == pytest.approx(test["bag_logit"].iloc[0], abs=1e-5)


def test_ranking_loss_widens_the_top_k_gap(cohort: FeatureCohort, ranked) -> None:
    with_rank = top_k_separation(ranked[0])
    pairs_without_rank, _ = cohort.train("pairs_no_rank", replace(FAST, w_rank=0.0))
    plain, _ = cohort.train("plain", replace(FAST, ranking_loss=False))
    # measured on this cohort (seed 0): about 1.0 vs 0.15 (pairs, w_rank 0) and 0.7 (bag mode)
    assert with_rank > top_k_separation(pairs_without_rank) + 0.5
    assert with_rank > top_k_separation(plain) + 0.15


def test_stepped_lr_once_per_epoch(cohort: FeatureCohort) -> None:
    out, _ = cohort.train("steplr", replace(FAST, epochs=5, step_size=2, gamma=0.5, lr=1e-3))
    lrs = pd.read_csv(out / "epochs.csv")["lr"].tolist()
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_stepped_lr_twice_per_epoch_as_the_authors(cohort: FeatureCohort) -> None:
    settings = replace(FAST, epochs=6, step_size=3, scheduler_steps_per_epoch=2, lr=1e-3)
    out, _ = cohort.train("steplr2", settings)
    lrs = pd.read_csv(out / "epochs.csv")["lr"].tolist()
    # steps taken before epoch e: 2e = 0, 2, 4, 6, 8, 10 -> halvings 0, 0, 1, 2, 2, 3
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4])


def test_authors_schedule_halves_every_37_5_epochs() -> None:
    """The paper's 350 epochs at step_size 75, stepped twice per epoch: the rate of epoch e is
    lr * 0.5 ** floor(2e / 75), so it halves at epochs 38, 75, 113, 150, 188, ..."""
    settings = MilSettings(epochs=350, lr=1.0, step_size=75, scheduler_steps_per_epoch=2)
    run = new_run(settings, 4, torch.device("cpu"))
    lrs = []
    for _ in range(settings.epochs):
        lrs.append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()  # no gradients: a no-op that keeps torch's call-order check quiet
        advance_schedule(run, settings)
    starts = [0, 38, 75, 113, 150, 188, 225, 263, 300, 338, 350]
    expected = [0.5**k for k in range(len(starts) - 1) for _ in range(starts[k], starts[k + 1])]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[199] == pytest.approx(1 / 32)  # the authors' snapshot epoch; once per epoch: 1/4


def test_reference_variant_trains_and_is_saved_as_such(cohort: FeatureCohort) -> None:
    out, metrics = cohort.train("reference", replace(FAST, epochs=10, dsmil="reference"))
    assert metrics["settings"]["dsmil"] == "reference"
    assert isinstance(load_model(out / "model.pt"), ReferenceDSMIL)
    slides = pd.read_parquet(out / "slides.parquet")
    test = slides[slides["split"] == "test"]
    assert roc_auc(test["label"], test["bag_prob"]) > 0.9


class Kill(Exception):
    pass


def _comparable(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("timing")
    return {
        "metrics": metrics,
        "epochs": pd.read_csv(out / "epochs.csv").drop(columns="seconds"),
        "slides": pd.read_parquet(out / "slides.parquet"),
        **{s: pd.read_parquet(out / "scores" / f"{s}.parquet") for s in ("train", "val", "test")},
    }


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(cohort: FeatureCohort, caplog) -> None:
    settings = replace(FAST, epochs=7)
    straight, _ = cohort.train("straight", settings)

    def kill_after_4(epoch: int) -> None:
        if epoch == 4:
            raise Kill

    checkpoints = cohort.root / "ckpt_resume"
    with pytest.raises(Kill):
        cohort.train(
            "resumed",
            settings,
            checkpoint_dir=checkpoints,
            on_epoch_end=kill_after_4,
        )
    assert (checkpoints / "state.pt").exists()
    assert not (cohort.root / "resumed" / "metrics.json").exists()  # nothing looks finished
    assert torch.load(checkpoints / "state.pt", weights_only=False)["epoch"] == 3

    seen: list[int] = []
    with caplog.at_level(logging.INFO):
        resumed, _ = cohort.train(
            "resumed",
            settings,
            checkpoint_dir=checkpoints,
            on_epoch_end=seen.append,
        )
    assert seen == [4, 5, 6]  # continued after the last checkpoint (epoch 3), redoing epoch 4
    assert "resuming from checkpoint" in caplog.text
    assert not (checkpoints / "state.pt").exists()  # cleared once the outputs are written

    a, b = _comparable(straight), _comparable(resumed)
    assert a["metrics"] == b["metrics"]
    for key in ("epochs", "slides", "train", "val", "test"):
        pd.testing.assert_frame_equal(a[key], b[key], check_exact=True)


def test_changed_settings_start_over(cohort: FeatureCohort, caplog) -> None:
    checkpoints = cohort.root / "ckpt_changed"

    def kill_after_1(epoch: int) -> None:
        if epoch == 1:
            raise Kill

    with pytest.raises(Kill):
        cohort.train(
            "changed",
            replace(FAST, epochs=4),
            checkpoint_dir=checkpoints,
            on_epoch_end=kill_after_1,
        )
    seen: list[int] = []
    with caplog.at_level(logging.WARNING):
        cohort.train(
            "changed",
            replace(FAST, epochs=4, lr=1e-3),
            checkpoint_dir=checkpoints,
            on_epoch_end=seen.append,
        )
    assert seen == [0, 1, 2, 3]
    assert "made with other settings" in caplog.text


def test_selection_never_looks_at_test_labels(cohort: FeatureCohort, tmp_path: Path) -> None:
    settings = replace(FAST, epochs=8)
    _, reference = cohort.train("reference_sel", settings)
    sheet = pd.read_csv(cohort.sheet, sep="\t", keep_default_na=False)
    test_rows = sheet["split"] == "test"
    sheet.loc[test_rows, "label"] = 1 - sheet.loc[test_rows, "label"]
    flipped_sheet = tmp_path / "flipped.tsv"
    sheet.to_csv(flipped_sheet, sep="\t", index=False)
    flipped = train_mil(
        flipped_sheet,
        sorted(cohort.features.glob("*.h5")),
        tmp_path / "out",
        None,
        settings,
        device="cpu",
    )
    for key in ("selected_epoch", "threshold", "val"):
        assert flipped[key] == reference[key]


def _small_cohort(root: Path, counts: dict[str, tuple[int, int]]) -> FeatureCohort:
    return FeatureCohort(root, make_bags(counts, dim=8, mean_patches=12, signal=4.0, seed=2))


def test_failed_and_empty_feature_files_are_excluded(tmp_path: Path) -> None:
    cohort = _small_cohort(tmp_path, {"train": (3, 3), "val": (2, 2), "test": (1, 1)})
    with FeatureWriter(
        cohort.features / "broken.h5",
        8,
        np.zeros((0, 2)),
        {"failed": True, "error": "unreadable tile"},
    ):
        pass  # a failed slide's file: no rows, marked failed
    with FeatureWriter(
        cohort.features / "blank.h5", 8, np.zeros((0, 2)), {"failed": False}
    ) as writer:
        writer.append(np.zeros((0, 8), dtype=np.float32))
    sheet = pd.read_csv(cohort.sheet, sep="\t", keep_default_na=False)
    extra = pd.DataFrame(
        [
            {**sheet.iloc[0].to_dict(), "slide_id": "broken", "split": "train"},
            {**sheet.iloc[0].to_dict(), "slide_id": "blank", "split": "test"},
        ]
    )
    pd.concat([sheet, extra]).to_csv(cohort.sheet, sep="\t", index=False)
    out, metrics = cohort.train("out", MilSettings(epochs=2, select="best_val"))
    excluded = {row["slide_id"]: row for row in metrics["excluded_slides"]}
    assert set(excluded) == {"broken", "blank"}
    assert "unreadable tile" in excluded["broken"]["reason"]
    assert excluded["blank"]["split"] == "test"
    assert not {"broken", "blank"} & set(pd.read_parquet(out / "slides.parquet")["slide_id"])


def test_val_without_both_classes_selects_on_loss_and_keeps_threshold_half(tmp_path: Path) -> None:
    cohort = _small_cohort(tmp_path, {"train": (3, 3), "val": (0, 3), "test": (1, 1)})
    _, metrics = cohort.train("out", MilSettings(epochs=3, select="best_val"))
    assert metrics["selection"]["metric_used"] == "loss"
    assert metrics["threshold"] == 0.5
    assert any("val loss" in note for note in metrics["notes"])


def test_fixed_epoch_selection(tmp_path: Path) -> None:
    cohort = _small_cohort(tmp_path, {"train": (3, 3), "val": (2, 2), "test": (1, 1)})
    _, metrics = cohort.train("out", MilSettings(epochs=4, select="fixed_epoch", fixed_epoch=2))
    assert metrics["selected_epoch"] == 2
    assert metrics["selection"]["metric_used"] is None
    _, metrics = cohort.train("last", MilSettings(epochs=4, select="fixed_epoch", fixed_epoch=-1))
    assert metrics["selected_epoch"] == 3
    assert MilSettings(epochs=4, select="fixed_epoch", fixed_epoch=-4).snapshot_epoch == 0


def test_clear_errors(tmp_path: Path) -> None:
    cohort = _small_cohort(tmp_path, {"train": (2, 0), "val": (1, 1), "test": (0, 0)})
    with pytest.raises(HnmError, match="needs both classes"):
        cohort.train("out", MilSettings(epochs=1, select="best_val"))
    (cohort.features / "train_tumor_000.h5").unlink()
    with pytest.raises(HnmError, match="train_tumor_000"):
        cohort.train("out", MilSettings(epochs=1, select="best_val"))
    with pytest.raises(ConfigError, match="fixed_epoch 5"):
        MilSettings(epochs=5, select="fixed_epoch", fixed_epoch=5)
    with pytest.raises(ConfigError, match="fixed_epoch -6"):
        MilSettings(epochs=5, select="fixed_epoch", fixed_epoch=-6)
    with pytest.raises(ConfigError, match="class_balance"):
        MilSettings(class_balance="oversample")
    no_val = _small_cohort(tmp_path / "noval", {"train": (2, 2), "val": (0, 0), "test": (1, 1)})
    with pytest.raises(HnmError, match="needs validation slides"):
        no_val.train("out", MilSettings(epochs=1, select="best_val"))
    no_val.train("out", MilSettings(epochs=2, select="fixed_epoch", fixed_epoch=1))  # fine


def test_class_weights_balance_only_bag_mode() -> None:
    bag_mode = MilSettings(ranking_loss=False, class_balance="balanced")
    # 2 positive, 6 negative: weights 8/(2*2) = 2 and 8/(2*6) = 2/3, so each class sums to 4
    assert class_weights(bag_mode, 2, 6) == pytest.approx({1: 2.0, 0: 2 / 3})
    assert class_weights(replace(bag_mode, class_balance="none"), 2, 6) == {0: 1.0, 1: 1.0}
    assert class_weights(MilSettings(class_balance="balanced"), 2, 6) == {0: 1.0, 1: 1.0}


def test_cli_trains_abmil_in_bag_mode(tmp_path: Path, capsys) -> None:
    cohort = _small_cohort(tmp_path, {"train": (3, 3), "val": (2, 2), "test": (1, 1)})
    out = tmp_path / "cli"
    code = cli_main(
        [
            "mil",
            "--sheet",
            str(cohort.sheet),
            "--features",
            *map(str, sorted(cohort.features.glob("*.h5"))),
            "--out-dir",
            str(out),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--aggregator",
            "abmil",
            "--epochs",
            "3",
            "--no-ranking-loss",
            "--class-balance",
            "balanced",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aggregator"] == "abmil" and metrics["settings"]["ranking_loss"] is False
    assert all((out / name).exists() for name in ("model.pt", "epochs.csv", "slides.parquet"))
    code = cli_main(
        [
            "mil",
            "--sheet",
            str(tmp_path / "nope.tsv"),
            "--features",
            "x.h5",
            "--out-dir",
            str(out),
        ]
    )
    assert code == 2 and "nope.tsv" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_learns_like_the_cpu(cohort: FeatureCohort) -> None:
    out = cohort.root / "cuda"
    metrics = train_mil(
        cohort.sheet,
        sorted(cohort.features.glob("*.h5")),
        out,
        cohort.root / "ck_cuda",
        FAST,
        device="cuda",
    )
    assert metrics["device"] == "cuda"
    slides = pd.read_parquet(out / "slides.parquet")
    test = slides[slides["split"] == "test"]
    assert roc_auc(test["label"], test["bag_prob"]) > 0.95
