"""Fine-tuning as the authors' trainer ran it, each part held to a float64 numpy reference.

Every reference below is written from the description of the authors' code (docs/method.md,
"Where hnm differs from the authors' code"): their SupCon batch mean over every view, their
self-paced confident negatives, their stepped cosine learning rate, their per-epoch curriculum,
the epochs after which they refresh the pseudo-labels, and the validation F1 their gate compares.
Each reference simulates the authors' epoch loop (a ratio recomputed at the END of an epoch is the
next epoch's), and the hnm settings that select the authors' behaviour must reproduce it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hnm.evaluate.metrics import f1_at_youden
from hnm.finetune.settings import EncoderSchedule, FinetuneSettings
from hnm.finetune.supcon import supcon_loss
from hnm.finetune.train import job_epochs
from hnm.mine.sets import read_val_f1, run_mining
from hnm.mine.settings import MineSettings

T = 0.07
E, WARMUP, EVERY = 100, 5, 5  # the README command: 100 epochs, warm-up 5, MIL every 5 epochs
R0, RT = 0.2, 0.8


# ---- the SupCon batch mean -----------------------------------------------------------------------


def authors_supcon(
    z: np.ndarray, labels: np.ndarray, bags: np.ndarray, pair_mode: int, mask_uncertain: bool
) -> float:
    """Their loss: rows are view 1 of every patch, then view 2; `labels` the patches' pseudo-labels
    (0/1), `bags` their slides' labels. pair_mode 2 keeps label-0 rows and columns in the positive
    mask, pair_mode 1 label-1 ones; masked (uncertain: bag 1, label 0) columns leave every
    denominator; each row's mean log-probability over its positives divides by (count + 1e-10),
    and the loss is minus the mean over ALL rows."""
    labels, bags = np.tile(labels, 2), np.tile(bags, 2)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = zn @ zn.T / T
    mask = (labels[:, None] == labels[None, :]).astype(np.float64)
    dropped = 0 if pair_mode == 1 else 1
    mask[labels == dropped, :] = 0
    mask[:, labels == dropped] = 0
    logits_mask = 1.0 - np.eye(len(labels))
    if mask_uncertain:
        logits_mask[:, (bags == 1) & (labels == 0)] = 0
    mask *= logits_mask
    denominator = (np.exp(logits) * logits_mask).sum(1, keepdims=True)
    log_prob = logits - np.log(denominator + (1e-10 if mask_uncertain else 0.0))
    mean_log_prob_pos = (mask * log_prob).sum(1) / (mask.sum(1) + 1e-10)
    return float(-mean_log_prob_pos.mean())


def numeric_gradient(f, z: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        plus, minus = z.copy(), z.copy()
        plus[index] += h
        minus[index] -= h
        grad[index] = (f(plus) - f(minus)) / (2 * h)
    return grad


# (hnm labels, bag labels, pair mode, hnm mode, mask uncertain): hnm labels -1 are the masked items
SUPCON_CASES = {
    # the negative-anchor update: hard negatives + pseudo-positives; positive rows have no positive
    "negative_update": ([0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], 2, "negative", True),
    # the positive-anchor update: negatives (two confident ones from tumour slides) + curriculum
    "positive_update": ([0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1], 1, "positive", False),
    # masked uncertain items: out of every denominator, never an anchor, still a row of the mean
    "masked_items": ([0, 0, -1, -1, 1, 1], [0, 0, 1, 1, 1, 1], 1, "positive", True),
    # a single positive patch: its two views are each other's only positive
    "lone_positive": ([0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1], 1, "positive", False),
}


@pytest.mark.parametrize("case", SUPCON_CASES, ids=str)
def test_supcon_all_views_is_the_authors_value_and_gradient(case: str) -> None:
    hnm_labels, bags, pair_mode, mode, mask_uncertain = SUPCON_CASES[case]
    hnm_labels, bags = np.array(hnm_labels), np.array(bags)
    authors_labels = np.where(hnm_labels == -1, 0, hnm_labels)
    z = np.random.default_rng(len(case)).normal(size=(2 * len(hnm_labels), 5))

    def reference(values: np.ndarray) -> float:
        return authors_supcon(values, authors_labels, bags, pair_mode, mask_uncertain)

    tensor = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    loss = supcon_loss(tensor, torch.tensor(np.tile(hnm_labels, 2)), mode, T, "all_views")
    loss.backward()
    assert loss.item() == pytest.approx(reference(z), rel=1e-5)
    np.testing.assert_allclose(
        tensor.grad.numpy(), numeric_gradient(reference, z), rtol=2e-3, atol=2e-4
    )
    # hnm's own mean differs by (views / counted anchors): the ablation measures a real change
    anchors = supcon_loss(torch.tensor(z), torch.tensor(np.tile(hnm_labels, 2)), mode, T)
    counted = 2 * int((hnm_labels == {"negative": 0, "positive": 1}[mode]).sum())
    assert anchors.item() * counted / z.shape[0] == pytest.approx(loss.item(), rel=1e-5)


def test_supcon_batch_weights_at_batch_512() -> None:
    """The issue's figures: 0.049 x for the positive-anchor update (486 negatives + 25 curriculum
    positives), 0.80 x for the negative-anchor one (409 hard negatives + 102 positives)."""
    assert (2 * 25) / (2 * 511) == pytest.approx(0.049, abs=5e-4)
    assert (2 * 409) / (2 * 511) == pytest.approx(0.80, abs=5e-3)


# ---- the epoch loop: learning rate, curriculum, confident negatives, refreshes ---------------------


def authors_epoch_loop() -> dict[str, list[float]]:
    """Simulate their trainer's bookkeeping over 100 epochs: the learning rate, curriculum ratio
    and confident-negative ratio IN USE during each epoch, and the epochs after which the MIL
    refreshes the pseudo-labels."""
    lr_steps, ratio, ratio_neg = 0, R0, 0.0  # the negative loader starts at ratio 0
    used: dict[str, list[float]] = {"lr": [], "r": [], "r_neg": [], "refresh_after": []}
    for epoch in range(E):
        used["lr"].append(0.01 * 0.5 * (1 + math.cos(math.pi * lr_steps / E)))
        used["r"].append(ratio)
        used["r_neg"].append(ratio_neg)
        if epoch >= WARMUP:  # the self-paced step at the end of the epoch
            ratio = (epoch - WARMUP) * (RT - R0) / (E - WARMUP) + R0
            ratio_neg = (epoch - WARMUP) * (RT - R0) / (E - WARMUP) + R0
        if epoch >= 1 and epoch % EVERY == 0:
            used["refresh_after"].append(epoch)
        if epoch >= 10:  # CosineAnnealingLR stepped from epoch 10 on
            lr_steps += 1
    return used


AUTHORS = authors_epoch_loop()
SCHEDULE = EncoderSchedule(epochs_per_round=EVERY, warmup=WARMUP, rounds=20, refresh_offset=1)


def test_stepped_learning_rate_over_100_epochs() -> None:
    settings = FinetuneSettings(
        lr=0.01,
        lr_schedule="stepped",
        cosine_after=10,
        epochs_per_round=EVERY,
        warmup=WARMUP,
        rounds=20,
    )
    for epoch in range(E):
        for step in (0, 7):  # constant within an epoch
            assert settings.rate(epoch, step, 10) == pytest.approx(AUTHORS["lr"][epoch], rel=1e-12)
    assert AUTHORS["lr"][99] == pytest.approx(2.96e-4, abs=1e-6)
    assert AUTHORS["lr"][70] == pytest.approx(3.46e-3, abs=1e-5)


def test_refresh_epochs_and_round_lengths() -> None:
    """They refresh after (0-based) epochs 5, 10, ..., 95: round r of hnm starts one epoch after
    each, round 0 trains 6 epochs, the last 4, 100 in all."""
    starts = [SCHEDULE.round_start(r) for r in range(21)]
    assert starts == [0] + [e + 1 for e in AUTHORS["refresh_after"]] + [E]
    settings = FinetuneSettings(epochs_per_round=EVERY, warmup=WARMUP, rounds=20, refresh_offset=1)
    lengths = [job_epochs(settings, r, starts[r], "enc") for r in range(20)]
    assert lengths[0] == 6 and lengths[-1] == 4 and set(lengths[1:-1]) == {5} and sum(lengths) == E


# A hand-made cohort: negative slides n1, n2; positive slides p1, p2 (many low scores, so the
# confident negatives and the curriculum cut at many ratios).
SCORE_RNG = np.random.default_rng(11)
SCORES = {
    "n1": SCORE_RNG.uniform(0.0, 0.9, 40),
    "n2": SCORE_RNG.uniform(0.0, 0.6, 30),
    "p1": SCORE_RNG.uniform(0.0, 1.0, 50),
    "p2": SCORE_RNG.uniform(0.0, 0.7, 35),
}
LABELS = {"n1": 0, "n2": 0, "p1": 1, "p2": 1}


def _sheet() -> pd.DataFrame:
    return pd.DataFrame(
        {"slide_id": list(LABELS), "label": list(LABELS.values()), "split": "train"}
    ).assign(path="x.tif")


def _scores() -> pd.DataFrame:
    return pd.DataFrame(
        [(s, i, float(v)) for s, values in SCORES.items() for i, v in enumerate(values)],
        columns=["slide_id", "idx", "score"],
    )


def _keys(frame: pd.DataFrame) -> set[tuple[str, int]]:
    return set(zip(frame["slide_id"].astype(str), frame["idx"].astype(int)))


def _reference_sets(epoch: int, active: bool) -> dict[str, set[tuple[str, int]]]:
    """Their loaders' sets at `epoch`: curriculum = pseudo-positives scored >= the interpolated
    (1 - r) quantile of the pseudo-positive scores; confident negatives (once active) = positive-
    slide patches scored <= eta and <= the r_neg quantile of those scores."""
    positive = [(s, i, v) for s in ("p1", "p2") for i, v in enumerate(SCORES[s])]
    pseudo = [(s, i, v) for s, i, v in positive if v > 0.3]
    low = [(s, i, v) for s, i, v in positive if v <= 0.3]
    q = np.quantile(np.array([v for *_, v in pseudo], dtype=np.float64), 1 - AUTHORS["r"][epoch])
    sets = {"curriculum": {(s, i) for s, i, v in pseudo if v >= q}, "confneg": set()}
    if active:
        values = np.array([v for *_, v in low], dtype=np.float64)
        q_neg = np.quantile(values, AUTHORS["r_neg"][epoch])
        sets["confneg"] = {(s, i) for s, i, v in low if v <= q_neg}
    return sets


def _mine(round_index, settings, val_f1, previous=None):
    sets, summary = run_mining(
        _sheet(),
        _scores(),
        "scores",
        val_f1,
        round_index,
        settings,
        *(previous or (None, None)),
    )
    return sets, summary


def test_curriculum_and_confident_negatives_every_epoch_of_100() -> None:
    settings = MineSettings(
        curriculum_update="epoch", confident_negatives="self_paced", gate=False, schedule=SCHEDULE
    )
    previous = None
    checked_ratios = set()
    for round_index in range(20):
        sets, summary = _mine(round_index, settings, 0.5, previous)
        previous = (sets, summary)
        for epoch in SCHEDULE.round_epochs(round_index):
            at = sets[(sets["epoch"] == -1) | (sets["epoch"] == epoch)]
            # their negative loader stops masking after the first refresh (after epoch 5)
            expected = _reference_sets(epoch, active=epoch > AUTHORS["refresh_after"][0])
            for name in ("curriculum", "confneg"):
                assert _keys(at[at["set"] == name]) == expected[name], (name, epoch)
            checked_ratios.add(round(AUTHORS["r_neg"][epoch], 6))
    assert len(checked_ratios) > 50  # many distinct r_neg values were cut


def test_confident_negatives_start_at_the_first_accepted_refresh_and_stay() -> None:
    settings = MineSettings(
        curriculum_update="epoch", confident_negatives="self_paced", schedule=SCHEDULE
    )
    round0 = _mine(0, settings, 0.6)
    assert (round0[0]["set"] == "confneg").sum() == 0  # the initial MIL is no refresh
    refused = _mine(1, settings, 0.5, round0)  # worse than round 0: pseudo-labels kept
    assert not refused[1]["refreshed"] and (refused[0]["set"] == "confneg").sum() == 0
    accepted = _mine(2, settings, 0.7, refused)
    assert accepted[1]["refreshed"] and accepted[1]["confident_negatives_active"]
    kept = _mine(3, settings, 0.1, accepted)  # refused again: the negatives stay
    assert not kept[1]["refreshed"] and kept[1]["confident_negatives_active"]
    for epoch in SCHEDULE.round_epochs(3):
        at = kept[0][(kept[0]["epoch"] == -1) | (kept[0]["epoch"] == epoch)]
        assert _keys(at[at["set"] == "confneg"]) == _reference_sets(epoch, True)["confneg"]


# ---- the gate ------------------------------------------------------------------------------------


def test_f1_at_youden_by_hand() -> None:
    # Youden's J is 0.5 at 0.9 and at 0.4; their argmin keeps the first (highest) cut, 0.9:
    # predictions 0, 0, 0, 1 -> TP 1, FP 0, FN 1 -> F1 2/3
    assert f1_at_youden([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]) == pytest.approx(2 / 3)
    assert f1_at_youden([1, 1], [0.2, 0.3]) is None


def test_gate_compares_the_best_epoch_f1_like_the_authors(tmp_path) -> None:
    """Per round: every MIL epoch's val F1 (at its own Youden point) and the kept snapshot's F1.
    Their trainer refreshes when the best epoch F1 is >= the best so far (starting from the
    initial MIL's); the snapshot's F1 would decide differently in rounds 1 and 2."""
    epoch_f1 = [[0.5, 0.8, 0.6], [0.7, 0.75, 0.4], [0.9, 0.6, 0.6], [0.85, 0.7, 0.2]]
    snapshot_f1 = [0.6, 0.7, 0.5, 0.8]
    expected, best = [], -math.inf
    for values in epoch_f1:
        signal = max(values) >= best
        best = max(best, max(values)) if signal else best
        expected.append(signal)
    assert expected == [True, False, True, False]

    decisions = {}
    for metric in ("best_epoch", "snapshot"):
        settings = MineSettings(gate_metric=metric, schedule=SCHEDULE)
        previous, decisions[metric] = None, []
        for round_index, (values, snapshot) in enumerate(zip(epoch_f1, snapshot_f1)):
            path = tmp_path / f"{metric}{round_index}.json"
            path.write_text(json.dumps({"val": {"f1": snapshot, "best_epoch_f1": max(values)}}))
            f1 = read_val_f1(path, settings.gate_metric)
            previous = _mine(round_index, settings, f1, previous)
            decisions[metric].append(previous[1]["refreshed"])
    assert decisions["best_epoch"] == expected
    assert decisions["snapshot"] != expected  # today's default gate: a different run


# ---- the ready-made config and the hard-negative quantile ------------------------------------------


def test_paper_config_takes_every_authors_choice(repo_root) -> None:
    import yaml

    base = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    paper = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())
    merged = {
        key: {**base.get(key, {}), **paper.get(key, {})} for key in ("encoder", "mine", "finetune")
    }
    expected = {
        "encoder": {"norm": "instance", "channel_order": "bgr", "normalize": "none"},
        "mine": {
            "curriculum_update": "epoch",
            "confident_negatives": "self_paced",
            "gate_metric": "best_epoch",
            "eta": 0.3,
            "neg_ratio": 0.2,
            "r0": R0,
            "r_final": RT,
            "r_neg0": 0.2,
        },
        "finetune": {
            "refresh_offset": 1,
            "lr_schedule": "stepped",
            "supcon_average": "all_views",
            "momentum": 0.0,
            "lr": 0.01,
            "cosine_after": 10,
            "warmup": WARMUP,
            "epochs_per_round": EVERY,
            "batch_size": 512,
            "temperature": T,
        },
    }
    for section, values in expected.items():
        for key, value in values.items():
            assert merged[section][key] == value, f"{section}.{key}"
    assert paper["rounds"] * paper["finetune"]["epochs_per_round"] == E


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 1.0])
def test_hard_negative_cut_equals_the_authors_quantile_for_their_ratios(fraction: float) -> None:
    """Their tau is numpy's interpolated quantile at 1 - neg_ratio; hnm's the k-th largest score.
    The two keep the same patches whenever 1 / neg_ratio is a whole number (every ratio the paper
    uses); for others (0.3, 0.7) some pool sizes keep one patch more under hnm's rule."""
    from hnm.mine.derived import top_fraction_threshold

    rng = np.random.default_rng(1)
    for n in range(5, 300):
        scores = rng.random(n)
        theirs = scores >= np.quantile(scores, 1 - fraction)
        ours = scores >= top_fraction_threshold(scores, fraction)
        assert np.array_equal(theirs, ours), n
