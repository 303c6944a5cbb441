"""Mining: global quantiles, curriculum r(t), edge cases and the gated refresh, checked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from hnm.cli import main
from hnm.core.errors import ConfigError, HnmError
from hnm.finetune.settings import EncoderSchedule
from hnm.mine.derived import top_fraction_threshold
from hnm.mine.schedule import curriculum_ratio
from hnm.mine.sets import read_val_f1, run_mining, should_refresh
from hnm.mine.settings import MineSettings

# Hand-made cohort: two negative slides, two positive slides (and one train slide without patches).
NEGATIVE = {"n1": [0.1, 0.5, 0.9, 0.9], "n2": [0.2, 0.3]}
POSITIVE = {"p1": [0.95, 0.6, 0.31, 0.3, 0.1], "p2": [0.4, 0.05]}


def make_sheet(extra: dict[str, tuple[int, str]] | None = None) -> pd.DataFrame:
    rows = [(s, 0, "train") for s in NEGATIVE] + [(s, 1, "train") for s in POSITIVE]
    rows += [("empty", 0, "train"), ("v1", 1, "val")]
    rows += [(slide, label, split) for slide, (label, split) in (extra or {}).items()]
    return pd.DataFrame(
        {
            "slide_id": [r[0] for r in rows],
            "path": [f"/slides/{r[0]}.svs" for r in rows],
            "label": [r[1] for r in rows],
            "split": [r[2] for r in rows],
            "mpp": np.nan,
            "annotation": "",
        }
    )


def make_scores(slides: dict[str, list[float]] | None = None) -> pd.DataFrame:
    slides = slides if slides is not None else {**NEGATIVE, **POSITIVE}
    rows = [
        (slide, idx, math.log(s / (1 - s)) if 0 < s < 1 else 0.0, s)
        for slide, scores in slides.items()
        for idx, s in enumerate(scores)
    ]
    return pd.DataFrame(rows, columns=["slide_id", "idx", "logit", "score"])


def members(sets: pd.DataFrame, name: str) -> set[tuple[str, int]]:
    chosen = sets[sets["set"] == name]
    return set(zip(chosen["slide_id"], chosen["idx"].astype(int)))


def mine(
    settings: MineSettings,
    round_index: int = 0,
    scores: pd.DataFrame | None = None,
    sheet: pd.DataFrame | None = None,
    **kwargs,
):  # noqa: ANN003, ANN201
    return run_mining(
        make_sheet() if sheet is None else sheet,
        make_scores() if scores is None else scores,
        "train.parquet",
        0.8,
        round_index,
        settings,
        **kwargs,
    )


def test_top_fraction_threshold_by_hand() -> None:
    scores = np.arange(1, 11) / 10  # 0.1 .. 1.0
    assert top_fraction_threshold(scores, 0.2) == pytest.approx(0.9)  # k = 2 (not 3 by rounding)
    assert top_fraction_threshold(scores, 0.25) == pytest.approx(0.8)  # k = ceil(2.5) = 3
    assert top_fraction_threshold(scores, 1.0) == pytest.approx(0.1)
    assert top_fraction_threshold(scores, 0.0) == pytest.approx(1.0)  # at least one kept
    assert math.isnan(top_fraction_threshold(np.array([]), 0.5))


def test_sets_by_hand_round_zero() -> None:
    sets, summary = mine(MineSettings(neg_ratio=0.5))
    # Negatives pooled: .9 .9 .5 .3 .2 .1 -> k = 3 -> tau = .5 (one global quantile, n2 gets none).
    assert summary["tau_hardneg"] == pytest.approx(0.5)
    assert members(sets, "hardneg") == {("n1", 1), ("n1", 2), ("n1", 3)}
    # s > eta = .3 strictly: p1's .3 is not a pseudo-positive.
    assert members(sets, "pos") == {("p1", 0), ("p1", 1), ("p1", 2), ("p2", 0)}
    # Round 0 -> t = 0 < warm-up -> r = .2 -> k = ceil(.8) = 1.
    assert summary["r_t"] == pytest.approx(0.2)
    assert members(sets, "curriculum") == {("p1", 0)}
    assert members(sets, "uncertain") == {("p1", 3), ("p1", 4), ("p2", 1)}
    assert members(sets, "confneg") == set()
    assert summary["counts"] == {
        "hardneg": 3,
        "pos": 4,
        "curriculum": 1,
        "confneg": 0,
        "uncertain": 3,
    }
    assert summary["slides"]["n2"]["hardneg"] == 0 and summary["slides"]["n2"]["n_patches"] == 2
    assert summary["slides"]["empty"]["n_patches"] == 0
    assert summary["excluded_slides"] == ["empty"]
    assert summary["refreshed"] is True and summary["best_val_f1"] == pytest.approx(0.8)
    assert summary["score_quantiles"]["negative_slides"]["q1"] == pytest.approx(0.9)
    assert set(sets.columns) == {"slide_id", "idx", "set", "score", "epoch"}
    assert (sets["epoch"] == -1).all()  # round-mode sets hold for the whole round
    # The curriculum patch is also a pos row: one row per (patch, set).
    assert len(sets[(sets.slide_id == "p1") & (sets.idx == 0)]) == 2


def test_curriculum_grows_with_the_round() -> None:
    schedule = EncoderSchedule(epochs_per_round=5, warmup=5, rounds=20)  # the paper's 100 epochs
    settings = MineSettings(neg_ratio=0.5, schedule=schedule)
    sets, summary = mine(settings, round_index=3)
    # t = 15: r = .2 + (15 - 5) * .6 / 95 = .2632 -> k = ceil(4 * .2632) = 2.
    assert summary["epoch"] == 15
    assert summary["r_t"] == pytest.approx(0.2 + 10 * 0.6 / 95)
    assert members(sets, "curriculum") == {("p1", 0), ("p1", 1)}


def test_ties_and_extreme_neg_ratios() -> None:
    sets, _ = mine(MineSettings(neg_ratio=1 / 6))
    assert members(sets, "hardneg") == {("n1", 2), ("n1", 3)}  # k = 1, but both .9 tie
    sets, _ = mine(MineSettings(neg_ratio=0.0))
    assert members(sets, "hardneg") == {("n1", 2), ("n1", 3)}  # never empty
    sets, summary = mine(MineSettings(neg_ratio=1.0))
    assert len(members(sets, "hardneg")) == 6 and summary["tau_hardneg"] == pytest.approx(0.1)


def test_one_negative_slide() -> None:
    scores = make_scores({"n1": NEGATIVE["n1"], **POSITIVE})
    sets, _ = mine(MineSettings(neg_ratio=0.5), scores=scores)
    assert members(sets, "hardneg") == {("n1", 2), ("n1", 3)}  # k = 2 of 4


def test_no_negative_slide_is_a_clear_error() -> None:
    with pytest.raises(HnmError, match="no patch of any negative"):
        mine(MineSettings(), scores=make_scores(POSITIVE))


def test_confident_negatives() -> None:
    sets, summary = mine(MineSettings(neg_ratio=0.5, confident_negatives="fixed", r_neg0=0.2))
    # Positive-slide scores (7): lowest k = ceil(1.4) = 2 -> .05 and .1, both <= eta.
    assert summary["tau_confneg"] == pytest.approx(0.1)
    assert members(sets, "confneg") == {("p2", 1), ("p1", 4)}
    assert members(sets, "uncertain") == {("p1", 3)}


def test_no_pseudo_positive_falls_back_to_each_slides_top_patch() -> None:
    low = {"p1": [0.2, 0.25, 0.1], "p2": [0.05, 0.3]}
    sets, summary = mine(MineSettings(), scores=make_scores({**NEGATIVE, **low}))
    assert summary["positives_fallback"] is True
    assert members(sets, "pos") == {("p1", 1), ("p2", 1)}
    assert members(sets, "curriculum") == {("p2", 1)}  # top 1 of the 2 by score
    assert ("p1", 1) not in members(sets, "uncertain")


def test_scores_of_a_non_training_slide_are_refused() -> None:
    scores = make_scores({**NEGATIVE, **POSITIVE, "v1": [0.9]})
    with pytest.raises(HnmError, match="not training slides.*v1"):
        mine(MineSettings(), scores=scores)


def test_bad_scores_are_refused() -> None:
    scores = make_scores()
    scores.loc[0, "score"] = float("nan")
    with pytest.raises(HnmError, match="NaN or outside"):
        mine(MineSettings(), scores=scores)
    with pytest.raises(ConfigError, match="neg_ratio"):
        MineSettings(neg_ratio=1.5)


def test_should_refresh() -> None:
    assert should_refresh(0.5, None, gate=True)
    assert should_refresh(0.7, 0.7, gate=True)  # "at least as good"
    assert not should_refresh(0.69, 0.7, gate=True)
    assert should_refresh(0.1, 0.7, gate=False)
    assert not should_refresh(float("nan"), 0.7, gate=True)
    assert should_refresh(0.1, float("nan"), gate=True)


def test_gated_refresh_keeps_the_previous_sets_and_recuts_the_curriculum() -> None:
    schedule = EncoderSchedule(epochs_per_round=5, warmup=5, rounds=20)  # the paper's 100 epochs
    settings = MineSettings(neg_ratio=0.5, schedule=schedule)
    previous_sets, previous_summary = mine(settings, round_index=0)
    # Round 3's scores differ (everything shuffled), but its F1 is below the best (0.8).
    changed = make_scores(
        {
            "n1": [0.9, 0.1, 0.1, 0.1],
            "n2": [0.9, 0.9],
            "p1": [0.1, 0.2, 0.2, 0.9, 0.9],
            "p2": [0.9, 0.9],
        }
    )
    sets, summary = run_mining(
        make_sheet(), changed, "train.parquet", 0.5, 3, settings, previous_sets, previous_summary
    )
    assert summary["refreshed"] is False
    assert summary["best_val_f1"] == pytest.approx(0.8)
    assert summary["sets_from_round"] == 0
    for name in ("hardneg", "pos", "uncertain"):
        assert members(sets, name) == members(previous_sets, name)
    assert members(sets, "curriculum") == {("p1", 0), ("p1", 1)}  # r(15) on the kept positives
    # A better round replaces them.
    sets, summary = run_mining(
        make_sheet(), changed, "train.parquet", 0.9, 3, settings, previous_sets, previous_summary
    )
    assert summary["refreshed"] is True and summary["best_val_f1"] == pytest.approx(0.9)
    assert members(sets, "hardneg") == {("n1", 0), ("n2", 0), ("n2", 1)}


def test_previous_sets_need_their_summary() -> None:
    previous_sets, _ = mine(MineSettings())
    with pytest.raises(ConfigError, match="both"):
        mine(MineSettings(), previous_sets=previous_sets)


def test_curriculum_ratio_schedule() -> None:
    assert curriculum_ratio(0, 0.2, 0.8, 5, 100) == pytest.approx(0.2)
    assert curriculum_ratio(4.9, 0.2, 0.8, 5, 100) == pytest.approx(0.2)
    assert curriculum_ratio(5, 0.2, 0.8, 5, 100) == pytest.approx(0.2)  # at warm-up: r0
    assert curriculum_ratio(52.5, 0.2, 0.8, 5, 100) == pytest.approx(0.5)
    assert curriculum_ratio(100, 0.2, 0.8, 5, 100) == pytest.approx(0.8)  # at the end: rT
    assert curriculum_ratio(120, 0.2, 0.8, 5, 100) == pytest.approx(0.8)


def test_read_val_f1(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"val": {"f1": 0.75, "auc": 0.9}}))
    assert read_val_f1(path) == 0.75
    path.write_text(json.dumps({"val": {"auc": 0.9}}))
    with pytest.raises(HnmError, match="val.f1"):
        read_val_f1(path)
    with pytest.raises(HnmError, match="does not exist"):
        read_val_f1(tmp_path / "missing.json")


def test_cli_two_rounds_with_gating(tmp_path) -> None:  # noqa: ANN001
    sheet = tmp_path / "sheet.tsv"
    make_sheet().to_csv(sheet, sep="\t", index=False)
    scores = tmp_path / "train.parquet"
    make_scores().to_parquet(scores)
    for round_index, f1 in ((0, 0.8), (1, 0.6)):
        metrics = tmp_path / f"metrics{round_index}.json"
        metrics.write_text(json.dumps({"val": {"f1": f1}}))
        argv = [
            "mine",
            "--sheet",
            str(sheet),
            "--scores",
            str(scores),
            "--metrics",
            str(metrics),
            "--round",
            str(round_index),
            "--neg-ratio",
            "0.5",
            "--out",
            str(tmp_path / f"r{round_index}" / "sets.parquet"),
            "--summary",
            str(tmp_path / f"r{round_index}" / "summary.json"),
        ]
        if round_index:
            argv += [
                "--previous-sets",
                str(tmp_path / "r0" / "sets.parquet"),
                "--previous-summary",
                str(tmp_path / "r0" / "summary.json"),
            ]
        assert main(argv) == 0
    first = json.loads((tmp_path / "r0" / "summary.json").read_text())
    second = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert first["refreshed"] is True and first["tau_confneg"] is None  # NaN written as null
    assert second["refreshed"] is False and second["best_val_f1"] == pytest.approx(0.8)
    kept = pd.read_parquet(tmp_path / "r1" / "sets.parquet")
    assert members(kept, "hardneg") == {("n1", 1), ("n1", 2), ("n1", 3)}
    # A missing metrics key is a one-line error with exit status 2.
    (tmp_path / "bad.json").write_text("{}")
    assert (
        main(
            [
                "mine",
                "--sheet",
                str(sheet),
                "--scores",
                str(scores),
                "--metrics",
                str(tmp_path / "bad.json"),
                "--round",
                "0",
                "--out",
                str(tmp_path / "x.parquet"),
                "--summary",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.parquet").exists()


def test_mining_health_by_hand() -> None:
    from hnm.mine.health import mining_health

    rows = [("p1", 0, "pos"), ("p1", 1, "pos"), ("p1", 2, "pos"), ("n1", 0, "hardneg")]
    rows += [("n1", 1, "hardneg"), ("p1", 0, "curriculum")]
    sets = pd.DataFrame(rows, columns=["slide_id", "idx", "set"])
    per_slide = {
        "p1": {"label": 1, "n_patches": 10, "pos": 3},
        "p2": {"label": 1, "n_patches": 10, "pos": 0},
        "p3": {"label": 1, "n_patches": 0, "pos": 0},  # no patches: not counted
        "n1": {"label": 0, "n_patches": 5, "pos": 0},
    }
    previous = pd.DataFrame(
        [("p1", 0, "pos"), ("p2", 4, "pos"), ("n1", 1, "hardneg")],
        columns=["slide_id", "idx", "set"],
    )
    health = mining_health(sets, per_slide, previous)
    assert health["pseudo_positive_slides"] == 0.5  # p1 of {p1, p2}
    assert health["pseudo_positive_top_slide_share"] == 1.0  # all 3 from p1
    assert health["pseudo_positive_fraction"] == 3 / 20
    # pos: {p1:0, p1:1, p1:2} against {p1:0, p2:4}: 1 shared of 4.
    assert health["pos_overlap_previous"] == 0.25
    # hardneg: {n1:0, n1:1} against {n1:1}: 1 of 2.
    assert health["hardneg_overlap_previous"] == 0.5
    first = mining_health(sets, per_slide, None)
    assert first["pos_overlap_previous"] is None and first["hardneg_overlap_previous"] is None
