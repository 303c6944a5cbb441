"""Binary classification metrics for slides and patches, and the validation-chosen threshold.

Written in numpy (one sort, cumulative counts) so patch metrics over millions of patches stay
cheap; the definitions match scikit-learn's (AUC with tied scores counted half, AUPRC as the
step-wise average precision without interpolation), which the tests check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

THRESHOLD_METHODS = ("f1", "youden")


def _as_arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return y, s


def roc_auc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve (Mann-Whitney); None when only one class is present."""
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # ties get their average rank, i.e. count one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct thresholds descending, true positives, false positives) predicting s >= t."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = (last_of_run + 1) - tp
    return s_sorted[last_of_run], tp.astype(np.float64), fp.astype(np.float64)


def average_precision(labels: Any, scores: Any) -> float | None:
    """Area under the precision-recall curve, sum_k (R_k - R_{k-1}) P_k; None without positives."""
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    _, tp, fp = _curve(y, s)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(labels: Any, scores: Any) -> tuple[float, float] | None:
    """(highest F1 over all thresholds, the score threshold reaching it); None without positives."""
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    thresholds, tp, fp = _curve(y, s)
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def binary_metrics(labels: Any, predicted: Any) -> dict[str, float | int | None]:
    """Accuracy, precision, recall, F1 and the confusion counts of hard 0/1 predictions."""
    y, p = _as_arrays(labels, predicted)
    p = p.astype(bool)
    tp = int(np.sum(y & p))
    fp = int(np.sum(~y & p))
    fn = int(np.sum(y & ~p))
    tn = int(np.sum(~y & ~p))
    total = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "accuracy": (tp + tn) / total if total else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def choose_threshold(labels: Any, probs: Any, method: str = "f1") -> tuple[float, float]:
    """(threshold, criterion value) maximising F1 or Youden's J = TPR - FPR on these (val) probs.

    Candidate cut points are the distinct probabilities; prediction is `prob >= threshold`. The
    returned threshold is the midpoint between the lowest probability called positive and the next
    lower one, so the val predictions are exactly the optimal ones while a test slide scored just
    below a val positive is not decided by a hair. Ties keep the highest (most specific) cut.
    Needs both classes: callers fall back to 0.5 otherwise.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method '{method}'; use one of {THRESHOLD_METHODS}")
    y, s = _as_arrays(labels, probs)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("choosing a threshold needs both classes")
    thresholds, tp, fp = _curve(y, s)
    if method == "f1":
        criterion = 2 * tp / (2 * tp + fp + (n_pos - tp))
    else:
        criterion = tp / n_pos - fp / n_neg
    best = int(np.argmax(criterion))
    if best + 1 < thresholds.size:
        threshold = (thresholds[best] + thresholds[best + 1]) / 2
    else:
        threshold = thresholds[best]
    return float(threshold), float(criterion[best])


def f1_at_youden(labels: Any, probs: Any) -> float | None:
    """F1 at the Youden point chosen on these same probabilities: the per-epoch validation F1
    of the authors' MIL log, whose best over all epochs their gated refresh compares (optimistic
    by construction, as the threshold is fitted to what it scores). None without both classes."""
    y, s = _as_arrays(labels, probs)
    if y.size == 0 or y.min() == y.max():
        return None
    threshold, _ = choose_threshold(y, s, "youden")
    return binary_metrics(y, s >= threshold)["f1"]
