"""The sets that move with the schedule: the curriculum positives and the confident negatives.

Both are cut from two pools that a refresh fixes: the pseudo-positives (`pos`) and `low`, the
positive-slide patches scored at or below eta. A round whose refresh the gate refuses keeps the
previous pools and cuts these two again at its own epochs, since their ratios follow the epoch,
not the pseudo-labels.

Rows carry an `epoch` column: EVERY_EPOCH (-1) for a set that holds for the whole round, or the
global epoch it belongs to when the set changes every epoch (the authors' trainer re-cuts both
at the end of every epoch). Per-epoch cuts use the authors' rule, numpy's linearly interpolated
quantile (top: s >= quantile(s, 1 - r); bottom: s <= quantile(s, r)); the per-round cuts keep
hnm's k-th-score rule (hnm.mine.sets.top_fraction_threshold), which never splits tied scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hnm.mine.schedule import curriculum_ratio, lagged_ratio
from hnm.mine.settings import MineSettings

EVERY_EPOCH = -1


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """The k-th largest score, k = max(1, ceil(fraction * n)); NaN for no scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return float("nan")
    # round() first: 0.2 * 10 is 2.0000000000000004 in floating point and must not become 3.
    k = max(1, math.ceil(round(fraction * scores.size, 9)))
    k = min(k, scores.size)
    return float(np.partition(scores, scores.size - k)[scores.size - k])


def quantile_top(scores: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """The authors' top cut: (mask s >= q, q) with q = quantile(s, 1 - fraction), interpolated."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return np.zeros(0, dtype=bool), float("nan")
    q = float(np.quantile(scores, 1.0 - fraction))
    return scores >= q, q


def quantile_bottom(scores: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """The authors' bottom cut: (mask s <= q, q) with q = quantile(s, fraction), interpolated."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return np.zeros(0, dtype=bool), float("nan")
    q = float(np.quantile(scores, fraction))
    return scores <= q, q


@dataclass
class MovingSets:
    """What derive() returns: the two moving sets (with `epoch`), `low` less the confident
    negatives (`uncertain`), and the ratios and thresholds for the summary."""

    curriculum: pd.DataFrame
    confneg: pd.DataFrame
    uncertain: pd.DataFrame
    thresholds: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        """The three sets by their names in sets.parquet (hnm.mine.sets.SETS)."""
        return {"curriculum": self.curriculum, "confneg": self.confneg, "uncertain": self.uncertain}


def _at(frame: pd.DataFrame, epoch: int) -> pd.DataFrame:
    return frame.assign(epoch=np.int64(epoch))


def _concat(frames: list[pd.DataFrame], like: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else _at(like.iloc[:0], EVERY_EPOCH)


def derive(
    pseudo: pd.DataFrame,
    low: pd.DataFrame,
    settings: MineSettings,
    round_index: int,
    confneg_active: bool,
) -> MovingSets:
    """The curriculum and confident negatives for fine-tuning round_index -> round_index + 1.

    `pseudo` and `low` are frames with slide_id, idx and score. `confneg_active` says whether a
    refresh has been accepted (self_paced: the authors' loader adds confident negatives only from
    then on).
    """
    schedule = settings.schedule
    epochs = list(schedule.round_epochs(round_index)) or [schedule.round_start(round_index)]
    ramp = (settings.r_final, schedule.warmup, schedule.total_epochs)
    thresholds: dict[str, Any] = {}
    if settings.curriculum_update == "epoch":
        parts, ratios = [], {}
        for epoch in epochs:
            ratio = lagged_ratio(epoch, settings.r0, *ramp, before=settings.r0)
            mask, tau = quantile_top(pseudo["score"].to_numpy(), ratio)
            parts.append(_at(pseudo[mask], epoch))
            ratios[str(epoch)] = ratio
            thresholds.setdefault("tau_curriculum", tau)
        curriculum = _concat(parts, pseudo)
        thresholds.update(r_t=ratios[str(epochs[0])], r_per_epoch=ratios)
    else:
        r_t = curriculum_ratio(epochs[0], settings.r0, *ramp)
        tau = top_fraction_threshold(pseudo["score"].to_numpy(), r_t)
        curriculum = _at(pseudo[pseudo["score"] >= tau], EVERY_EPOCH)
        thresholds.update(r_t=r_t, tau_curriculum=tau)

    thresholds["tau_confneg"] = float("nan")
    confneg = _at(low.iloc[:0], EVERY_EPOCH)
    if settings.confident_negatives == "fixed" and not (pseudo.empty and low.empty):
        # the lowest r_neg0 of ALL positive-slide scores, and at most eta (so within `low`)
        every = np.concatenate([pseudo["score"].to_numpy(), low["score"].to_numpy()])
        tau = -top_fraction_threshold(-every, settings.r_neg0)
        confneg = _at(low[low["score"] <= tau], EVERY_EPOCH)
        thresholds["tau_confneg"] = tau
    elif settings.confident_negatives == "self_paced" and confneg_active and not low.empty:
        parts, ratios = [], {}
        for epoch in epochs:
            ratio = lagged_ratio(epoch, settings.r_neg0, *ramp, before=0.0)
            mask, tau = quantile_bottom(low["score"].to_numpy(), ratio)
            parts.append(_at(low[mask], epoch))
            ratios[str(epoch)] = ratio
            thresholds.setdefault("tau_confneg", tau)
        confneg = _concat(parts, low)
        thresholds["r_neg_per_epoch"] = ratios
    thresholds["confident_negatives_active"] = bool(confneg_active)
    chosen = pd.MultiIndex.from_frame(confneg[["slide_id", "idx"]])
    keys = pd.MultiIndex.from_frame(low[["slide_id", "idx"]])
    uncertain = _at(low[~keys.isin(chosen)], EVERY_EPOCH)
    return MovingSets(curriculum, confneg, uncertain, thresholds)
