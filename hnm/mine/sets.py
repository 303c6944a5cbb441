"""Choosing the fine-tuning patch sets from one round's MIL patch scores (docs/method.md, "Patch sets").

Representation: `sets.parquet` has ONE ROW PER (patch, set) with columns slide_id, idx, set, score.
A curriculum positive therefore appears twice, once as `pos` and once as `curriculum`, so every set
is a plain filter (`sets[sets.set == "curriculum"]`) and no set hides inside another's flag column.
Sets: `hardneg` (negative slides, s >= tau), `pos` (positive slides, s > eta), `curriculum` (top
r(t) of `pos`), `confneg` (optional confident negatives in positive slides), `uncertain` (positive
slides, s <= eta, not confneg).

Edge behaviour, chosen and tested:
- Top fractions (hard negatives, curriculum, confident negatives) keep k = max(1, ceil(f * n)) items
  by score and every item tied with the k-th: the threshold is the k-th largest score, so the set
  holds at least a fraction f and never splits equal scores. neg_ratio = 1.0 keeps all negatives
  (ItS2CLR); neg_ratio = 0 keeps only the top-scoring negative(s), since an empty H would leave
  fine-tuning with no epoch to iterate over.
- Confident negatives (mine.confident_negatives) and the curriculum move with the schedule; they
  are cut in hnm.mine.derived (per round, or per epoch as the authors' trainer does, with an
  `epoch` column on their rows). They join the negatives of the positive-anchor update only.
- No patch above eta: the pseudo-positives fall back to each positive slide's top-scoring patch
  (DSMIL's critical instance, the one patch the MIL assumption says a positive bag must contain),
  recorded as `positives_fallback` in the summary. Fine-tuning then keeps both updates.
- A slide with no patches simply contributes no rows (listed in the summary with n_patches 0); no
  negative slide with patches, or no positive one, is an error naming the files.
- Curriculum epoch: sets mined in round R feed fine-tuning R -> R+1, which starts at global epoch
  schedule.round_start(R) (encoder_R has completed that many epochs), so r(t) is taken there.
- Gated refresh: when this round's validation F1 is below the best so far, the previous sets stay
  (the pseudo-labels are kept), but the curriculum and confident negatives are re-cut from the
  kept pools at the new epochs, because their ratios depend on the epoch, not the pseudo-labels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hnm.core.errors import ConfigError, HnmError
from hnm.mine.derived import EVERY_EPOCH, derive, top_fraction_threshold
from hnm.mine.health import mining_health
from hnm.mine.settings import MineSettings

log = logging.getLogger(__name__)

SETS = ("hardneg", "pos", "curriculum", "confneg", "uncertain")
SCORE_COLUMNS = ("slide_id", "idx", "score")
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def attach_labels(scores: pd.DataFrame, sheet: pd.DataFrame, scores_path: str) -> pd.DataFrame:
    """Scores with each slide's label from the sheet; slides outside the train split are an error.

    A scored slide that is not a training slide would leak validation/test labels into the encoder,
    so it is refused rather than dropped.
    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise HnmError(
            f"scores file {scores_path} lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(SCORE_COLUMNS)} (written by `hnm mil`)"
        )
    scores = scores.loc[:, list(SCORE_COLUMNS)].copy()
    scores["slide_id"] = scores["slide_id"].astype(str)
    scores["idx"] = scores["idx"].astype(np.int64)
    scores["score"] = scores["score"].astype(np.float64)
    bad = scores[~scores["score"].between(0.0, 1.0)]
    if len(bad):
        first = bad.iloc[0]
        raise HnmError(
            f"scores file {scores_path}: {len(bad)} score(s) are NaN or outside [0, 1] (first: "
            f"slide '{first.slide_id}' patch {first.idx} = {first.score}); scores must be sigmoid "
            "outputs"
        )
    duplicated = scores.duplicated(["slide_id", "idx"])
    if duplicated.any():
        first = scores[duplicated].iloc[0]
        raise HnmError(
            f"scores file {scores_path}: patch {first.idx} of slide '{first.slide_id}' is scored "
            f"more than once ({int(duplicated.sum())} duplicate rows)"
        )
    train = sheet[sheet["split"] == "train"].set_index("slide_id")["label"].astype(int)
    unknown = sorted(set(scores["slide_id"].unique()) - set(train.index))
    if unknown:
        raise HnmError(
            f"scores file {scores_path} has slide(s) that are not training slides of the sheet: "
            f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; mining may only use "
            "the train split (regenerate the scores with the current sheet)"
        )
    # Labels through the slide categories: a per-row dict lookup over millions of rows is slow.
    slides = scores["slide_id"].astype("category")
    labels = train.reindex(slides.cat.categories).to_numpy(dtype=np.int64)
    scores["label"] = labels[slides.cat.codes.to_numpy()]
    return scores


def _require_classes(scored: pd.DataFrame, scores_path: str) -> None:
    for label, name in ((0, "negative (normal)"), (1, "positive (tumor)")):
        if not (scored["label"] == label).any():
            raise HnmError(
                f"scores file {scores_path} has no patch of any {name} training slide: "
                "hard-negative mining needs scored patches from both classes; check that such "
                "slides are in the train split and were not all excluded as failed"
            )


def mine_sets(
    scored: pd.DataFrame, settings: MineSettings, round_index: int, confneg_active: bool
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fresh sets from labelled scores (slide_id, idx, score, label) -> (sets rows, thresholds)."""
    negative = scored[scored["label"] == 0]
    positive = scored[scored["label"] == 1]
    tau = top_fraction_threshold(negative["score"].to_numpy(), settings.neg_ratio)
    hardneg = negative[negative["score"] >= tau]

    pseudo = positive[positive["score"] > settings.eta]
    fallback = pseudo.empty and not positive.empty
    if fallback:
        top = positive.sort_values(["score", "idx"], ascending=[False, True])
        pseudo = top.drop_duplicates("slide_id", keep="first")
        log.warning(
            "no positive-slide patch scores above eta=%s (max %.4f): using each positive slide's "
            "top-scoring patch as its pseudo-positive (%d patches)",
            settings.eta,
            positive["score"].max(),
            len(pseudo),
        )
    low = positive[(positive["score"] <= settings.eta) & ~positive.index.isin(pseudo.index)]
    moving = derive(pseudo, low, settings, round_index, confneg_active)
    sets = _rows({"hardneg": hardneg, "pos": pseudo, **moving.parts()})
    thresholds = {"tau_hardneg": tau, **moving.thresholds, "positives_fallback": bool(fallback)}
    return sets, thresholds


def _rows(named: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame of (slide_id, idx, set, score, epoch), ordered by set, epoch, slide and patch
    index; a frame without an `epoch` column holds for every epoch of the round."""

    def column(name: str, dtype: Any, default: Any = None) -> np.ndarray:
        return np.concatenate(
            [
                frame[name].to_numpy(dtype=dtype)
                if name in frame.columns
                else np.full(len(frame), default, dtype=dtype)
                for frame in named.values()
            ]
        )

    slide_ids = column("slide_id", object).astype(str).astype(object)
    idx = column("idx", np.int64)
    score = column("score", np.float64)
    epoch = column("epoch", np.int64, EVERY_EPOCH)
    set_code = np.concatenate(
        [np.full(len(frame), SETS.index(name), dtype=np.int64) for name, frame in named.items()]
    )
    slide_code, _ = pd.factorize(slide_ids, sort=True)
    order = np.lexsort((idx, slide_code, epoch, set_code))
    return pd.DataFrame(
        {
            "slide_id": pd.Series(slide_ids[order], dtype=str),
            "idx": idx[order],
            "set": pd.Series(np.asarray(SETS, dtype=object)[set_code[order]], dtype=str),
            "score": score[order],
            "epoch": epoch[order],
        }
    )


def rederive(
    sets: pd.DataFrame, settings: MineSettings, round_index: int, confneg_active: bool
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Kept sets (a refused refresh) with the curriculum and the confident negatives cut again
    from their pseudo-positives and low-scoring positive-slide patches at this round's epochs."""
    pseudo = sets[sets["set"] == "pos"]
    low = sets[sets["set"].isin(["confneg", "uncertain"])].drop_duplicates(["slide_id", "idx"])
    moving = derive(pseudo, low.drop(columns="epoch"), settings, round_index, confneg_active)
    kept = {name: sets[sets["set"] == name] for name in ("hardneg", "pos")}
    return _rows({**kept, **moving.parts()}), moving.thresholds


def read_sets(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A sets file, checked for the columns and set names this module writes."""
    path = Path(path)
    if not path.exists():
        raise HnmError(f"sets file {path} does not exist; run `hnm mine` for that round first")
    sets = pd.read_parquet(path)
    missing = [c for c in ("slide_id", "idx", "set", "score") if c not in sets.columns]
    if missing:
        raise HnmError(f"sets file {path} lacks column(s) {', '.join(missing)}")
    unknown = sorted(set(sets["set"]) - set(SETS))
    if unknown:
        raise HnmError(f"sets file {path} has unknown set name(s) {unknown}; known: {SETS}")
    sets["slide_id"] = sets["slide_id"].astype(str)
    sets["idx"] = sets["idx"].astype(np.int64)
    # files from before the per-epoch sets hold every row for the whole round
    sets["epoch"] = sets["epoch"].astype(np.int64) if "epoch" in sets.columns else EVERY_EPOCH
    return sets


def sets_at(sets: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """The rows that hold at global epoch `epoch`: the whole round's and that epoch's own."""
    return sets[(sets["epoch"] == EVERY_EPOCH) | (sets["epoch"] == epoch)]


GATE_KEYS = {"snapshot": "f1", "best_epoch": "best_epoch_f1"}


def read_val_f1(metrics_path: str | os.PathLike[str], gate_metric: str = "snapshot") -> float:
    """The val F1 the gate compares (metrics.json's val.f1, or val.best_epoch_f1 for the
    authors' best over all MIL epochs); NaN (never better than anything) when it is null."""
    key = GATE_KEYS[gate_metric]
    try:
        metrics = json.loads(Path(metrics_path).read_text())
    except FileNotFoundError as error:
        raise HnmError(f"MIL metrics file {metrics_path} does not exist") from error
    except json.JSONDecodeError as error:
        raise HnmError(f"MIL metrics file {metrics_path} is not valid JSON: {error}") from error
    value = metrics.get("val", {}).get(key, "missing") if isinstance(metrics, dict) else "missing"
    if value == "missing" or not (value is None or isinstance(value, (int, float))):
        raise HnmError(
            f"MIL metrics file {metrics_path} has no numeric val.{key} (the gated refresh "
            f"compares validation F1 between rounds, gate_metric {gate_metric}); expected "
            f'{{"val": {{"{key}": <float>, ...}}}}: re-run `hnm mil` for that round'
        )
    return float("nan") if value is None else float(value)


def should_refresh(val_f1: float, previous_best: float | None, gate: bool) -> bool:
    """Replace the sets unless gating is on and this round is worse than the best so far.

    A NaN F1 counts as worse than any earlier round; with no earlier round there is nothing to keep.
    """
    if not gate or previous_best is None:
        return True
    if math.isnan(val_f1):
        return False
    return math.isnan(previous_best) or val_f1 >= previous_best


def describe(
    sets: pd.DataFrame,
    scored: pd.DataFrame,
    expected_slides: list[str],
    sheet_labels: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Counts per set and per slide, and score quantiles per slide class, for the summary.

    A slide without scored patches takes its label from `sheet_labels` (the sheet), so the summary
    and the log show its class rather than None."""
    # a patch in a per-epoch set counts once, whichever epochs it belongs to
    sets = sets.drop_duplicates(["slide_id", "idx", "set"])
    counts = {name: int((sets["set"] == name).sum()) for name in SETS}
    per_slide: dict[str, dict[str, Any]] = {}
    labels = scored.groupby("slide_id")["label"].first()
    patches = scored.groupby("slide_id").size()
    table = sets.groupby(["slide_id", "set"]).size().unstack(fill_value=0)
    for slide in sorted(set(expected_slides) | set(patches.index) | set(table.index)):
        row = {
            name: int(table.at[slide, name])
            if slide in table.index and name in table.columns
            else 0
            for name in SETS
        }
        row["n_patches"] = int(patches.get(slide, 0))
        row["label"] = (
            int(labels[slide]) if slide in labels.index else (sheet_labels or {}).get(slide)
        )
        per_slide[slide] = row
    quantiles = {}
    for label, name in ((0, "negative_slides"), (1, "positive_slides")):
        values = scored.loc[scored["label"] == label, "score"].to_numpy()
        quantiles[name] = (
            {f"q{q:g}": float(np.quantile(values, q)) for q in QUANTILES} if values.size else {}
        )
    return {"counts": counts, "slides": per_slide, "score_quantiles": quantiles}


def run_mining(
    sheet: pd.DataFrame,
    scores: pd.DataFrame,
    scores_path: str,
    val_f1: float,
    round_index: int,
    settings: MineSettings,
    previous_sets: pd.DataFrame | None = None,
    previous_summary: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(sets, summary) for one round, with the gated refresh applied."""
    if (previous_sets is None) != (previous_summary is None):
        raise ConfigError(
            "give both the previous round's sets and its summary, or neither (round 0)"
        )
    scored = attach_labels(scores, sheet, scores_path)
    _require_classes(scored, scores_path)
    schedule = settings.schedule
    previous_best = _previous_best(previous_summary)
    refresh = should_refresh(val_f1, previous_best, settings.gate)
    # The authors' loader adds confident negatives from the first ACCEPTED refresh on (round 0's
    # sets come from the initial MIL, no refresh) and never stops adding them after that.
    confneg_active = bool((previous_summary or {}).get("confident_negatives_active")) or (
        round_index > 0 and refresh
    )
    if refresh:
        sets, thresholds = mine_sets(scored, settings, round_index, confneg_active)
        sets_from_round = round_index
    else:
        assert previous_sets is not None and previous_summary is not None
        sets, thresholds = rederive(previous_sets, settings, round_index, confneg_active)
        thresholds["tau_hardneg"] = previous_summary.get("tau_hardneg")
        thresholds["positives_fallback"] = previous_summary.get("positives_fallback")
        sets_from_round = previous_summary.get("sets_from_round", round_index - 1)
    best = val_f1 if previous_best is None else _nanmax(val_f1, previous_best)
    expected = sorted(sheet.loc[sheet["split"] == "train", "slide_id"].astype(str))
    summary: dict[str, Any] = {
        "round": round_index,
        "epoch": schedule.round_start(round_index),
        "epochs": [schedule.round_start(round_index), schedule.round_start(round_index + 1)],
        "val_f1": val_f1,
        "best_val_f1": best,
        "previous_best_val_f1": previous_best,
        "refreshed": refresh,
        "sets_from_round": sets_from_round,
        **thresholds,
        **describe(sets, scored, expected, _sheet_labels(sheet)),
        "settings": asdict(settings),
    }
    summary["excluded_slides"] = [
        slide for slide, row in summary["slides"].items() if row["n_patches"] == 0
    ]
    summary["health"] = mining_health(sets, summary["slides"], previous_sets)
    return sets, summary


def _sheet_labels(sheet: pd.DataFrame) -> dict[str, int]:
    return {str(slide): int(label) for slide, label in zip(sheet["slide_id"], sheet["label"])}


def _previous_best(previous_summary: dict[str, Any] | None) -> float | None:
    if previous_summary is None:
        return None
    value = previous_summary.get("best_val_f1")
    return float("nan") if value is None else float(value)


def _nanmax(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


def log_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{name} {count}" for name, count in summary["counts"].items())
    log.info(
        "round %d (curriculum epoch %d, r(t)=%.3f): val F1 %.4f, best so far %.4f -> %s",
        summary["round"],
        summary["epoch"],
        summary["r_t"],
        summary["val_f1"],
        summary["best_val_f1"],
        "sets refreshed"
        if summary["refreshed"]
        else f"kept the sets of round {summary['sets_from_round']} (F1 below the best)",
    )
    log.info("sets: %s; tau (hard negatives) %s", counts, summary["tau_hardneg"])
    for name, quantiles in summary["score_quantiles"].items():
        log.info(
            "score quantiles, %s: %s", name, ", ".join(f"{q} {v:.4f}" for q, v in quantiles.items())
        )
    for slide, row in summary["slides"].items():
        log.info(
            "slide %s (label %s): %d patches; %s",
            slide,
            row["label"],
            row["n_patches"],
            ", ".join(f"{name} {row[name]}" for name in SETS if row[name]) or "in no set",
        )
    if summary["excluded_slides"]:
        log.warning(
            "%d training slide(s) have no scored patches and contribute nothing: %s",
            len(summary["excluded_slides"]),
            ", ".join(summary["excluded_slides"]),
        )


def json_safe(value: Any) -> Any:
    """NaN/inf -> null: strict JSON readers (and the next round's summary reader) reject NaN."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
