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
- Confident negatives (optional): positive-slide patches with s <= eta that are also among the
  lowest r_neg0 fraction of ALL positive-slide scores (the same k-th rule, from below); it has no
  schedule. They join the negatives of the positive-anchor update only.
- No patch above eta: the pseudo-positives fall back to each positive slide's top-scoring patch
  (DSMIL's critical instance, the one patch the MIL assumption says a positive bag must contain),
  recorded as `positives_fallback` in the summary. Fine-tuning then keeps both updates.
- A slide with no patches simply contributes no rows (listed in the summary with n_patches 0); no
  negative slide with patches, or no positive one, is an error naming the files.
- Curriculum epoch: sets mined in round R feed fine-tuning R -> R+1, which starts at global epoch
  t = R * epochs_per_round (encoder_R has completed that many epochs), so r(t) is taken there.
- Gated refresh: when this round's validation F1 is below the best so far, the previous sets stay
  (the pseudo-labels are kept), but the curriculum is re-cut from the kept pseudo-positives at the
  new t, because r(t) depends on the epoch, not on the pseudo-labels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hnm.core.errors import ConfigError, HnmError
from hnm.core.settings import StageSettings, setting
from hnm.mining.health import mining_health
from hnm.mining.schedule import EncoderSchedule, curriculum_ratio

log = logging.getLogger(__name__)

SETS = ("hardneg", "pos", "curriculum", "confneg", "uncertain")
SCORE_COLUMNS = ("slide_id", "idx", "score")
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass(frozen=True)
class MiningSettings(StageSettings):
    """Every knob of mining, declared once (hnm.core.settings); `schedule` is the encoder's epoch
    schedule, whose settings belong to the finetune section (hnm.mining.schedule.EncoderSchedule).
    """

    section = "mining"

    eta: float = setting(
        0.3, "pseudo-positive threshold on sigmoid instance scores", minimum=0, maximum=1
    )
    neg_ratio: float = setting(
        0.2,
        "hard negatives = top neg_ratio of negative-slide patches (1.0 = all, ItS2CLR)",
        minimum=0,
        maximum=1,
    )
    r0: float = setting(
        0.2, "curriculum: fraction of pseudo-positives used up to warm-up", minimum=0, maximum=1
    )
    r_final: float = setting(
        0.8,
        "curriculum: the fraction grows linearly to this at the last epoch of the schedule",
        minimum=0,
        maximum=1,
    )
    confident_negatives: bool = setting(
        False, "add the lowest-scoring positive-slide patches as negatives of the second update"
    )
    r_neg0: float = setting(
        0.2,
        "confident negatives: lowest fraction of positive-slide scores (no schedule)",
        minimum=0,
        maximum=1,
    )
    gate: bool = setting(
        True, "keep the previous sets when this round's val F1 is below the best so far"
    )
    schedule: EncoderSchedule = field(default_factory=EncoderSchedule)


def curriculum_epoch(round_index: int, epochs_per_round: int) -> int:
    """The global epoch at which round R's sets start being used (see the module docstring)."""
    return round_index * epochs_per_round


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """The k-th largest score, k = max(1, ceil(fraction * n)); NaN for no scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return float("nan")
    # round() first: 0.2 * 10 is 2.0000000000000004 in floating point and must not become 3.
    k = max(1, math.ceil(round(fraction * scores.size, 9)))
    k = min(k, scores.size)
    return float(np.partition(scores, scores.size - k)[scores.size - k])


def attach_labels(scores: pd.DataFrame, sheet: pd.DataFrame, scores_path: str) -> pd.DataFrame:
    """Scores with each slide's label from the sheet; slides outside the train split are an error.

    A scored slide that is not a training slide would leak validation/test labels into the encoder,
    so it is refused rather than dropped.
    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise HnmError(
            f"scores file {scores_path} lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(SCORE_COLUMNS)} (written by `hnm train-mil`)"
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
    scored: pd.DataFrame, settings: MiningSettings, epoch: float
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
    r_t = curriculum_ratio(
        epoch,
        settings.r0,
        settings.r_final,
        settings.schedule.warmup,
        settings.schedule.total_epochs,
    )
    curriculum, tau_curriculum = _curriculum(pseudo, r_t)

    low = positive[(positive["score"] <= settings.eta) & ~positive.index.isin(pseudo.index)]
    tau_confneg = float("nan")
    confneg = low.iloc[:0]
    if settings.confident_negatives and not positive.empty:
        # "the lowest r_neg0 quantile" of all positive-slide scores, and at most eta.
        tau_confneg = -top_fraction_threshold(-positive["score"].to_numpy(), settings.r_neg0)
        confneg = low[low["score"] <= tau_confneg]
    uncertain = low[~low.index.isin(confneg.index)]

    sets = _rows(
        {
            "hardneg": hardneg,
            "pos": pseudo,
            "curriculum": curriculum,
            "confneg": confneg,
            "uncertain": uncertain,
        }
    )
    thresholds = {
        "tau_hardneg": tau,
        "tau_curriculum": tau_curriculum,
        "tau_confneg": tau_confneg,
        "r_t": r_t,
        "positives_fallback": bool(fallback),
    }
    return sets, thresholds


def _curriculum(pseudo: pd.DataFrame, r_t: float) -> tuple[pd.DataFrame, float]:
    """The top r(t) of the pseudo-positives by score: one quantile over all positive slides."""
    tau = top_fraction_threshold(pseudo["score"].to_numpy(), r_t)
    return pseudo[pseudo["score"] >= tau], tau


def _rows(named: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame of (slide_id, idx, set, score), ordered by set, slide and patch index."""
    slide_ids = np.concatenate(
        [frame["slide_id"].astype(str).to_numpy(dtype=object) for frame in named.values()]
    )
    idx = np.concatenate([frame["idx"].to_numpy(dtype=np.int64) for frame in named.values()])
    score = np.concatenate([frame["score"].to_numpy(dtype=np.float64) for frame in named.values()])
    set_code = np.concatenate(
        [np.full(len(frame), SETS.index(name), dtype=np.int64) for name, frame in named.items()]
    )
    slide_code, _ = pd.factorize(slide_ids, sort=True)
    order = np.lexsort((idx, slide_code, set_code))
    return pd.DataFrame(
        {
            "slide_id": pd.Series(slide_ids[order], dtype=str),
            "idx": idx[order],
            "set": pd.Series(np.asarray(SETS, dtype=object)[set_code[order]], dtype=str),
            "score": score[order],
        }
    )


def recut_curriculum(sets: pd.DataFrame, r_t: float) -> tuple[pd.DataFrame, float]:
    """Kept sets with the curriculum re-chosen from their `pos` rows at a new r(t)."""
    kept = sets[sets["set"] != "curriculum"]
    curriculum, tau = _curriculum(sets[sets["set"] == "pos"], r_t)
    parts = {name: kept[kept["set"] == name] for name in SETS if name != "curriculum"}
    parts["curriculum"] = curriculum
    return _rows(parts), tau


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
    return sets


def read_val_f1(metrics_path: str | os.PathLike[str]) -> float:
    """metrics.json["val"]["f1"]; NaN (never better than anything) when it is null."""
    try:
        metrics = json.loads(Path(metrics_path).read_text())
    except FileNotFoundError as error:
        raise HnmError(f"MIL metrics file {metrics_path} does not exist") from error
    except json.JSONDecodeError as error:
        raise HnmError(f"MIL metrics file {metrics_path} is not valid JSON: {error}") from error
    value = metrics.get("val", {}).get("f1", "missing") if isinstance(metrics, dict) else "missing"
    if value == "missing" or not (value is None or isinstance(value, (int, float))):
        raise HnmError(
            f"MIL metrics file {metrics_path} has no numeric val.f1 (the gated refresh compares "
            'validation F1 between rounds); expected {"val": {"f1": <float>, ...}}'
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
    settings: MiningSettings,
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
    epoch = curriculum_epoch(round_index, settings.schedule.epochs_per_round)
    previous_best = _previous_best(previous_summary)
    refresh = should_refresh(val_f1, previous_best, settings.gate)

    if refresh:
        sets, thresholds = mine_sets(scored, settings, epoch)
        sets_from_round = round_index
    else:
        assert previous_sets is not None and previous_summary is not None
        r_t = curriculum_ratio(
            epoch,
            settings.r0,
            settings.r_final,
            settings.schedule.warmup,
            settings.schedule.total_epochs,
        )
        sets, tau_curriculum = recut_curriculum(previous_sets, r_t)
        thresholds = {
            key: previous_summary.get(key)
            for key in ("tau_hardneg", "tau_confneg", "positives_fallback")
        }
        thresholds.update(r_t=r_t, tau_curriculum=tau_curriculum)
        sets_from_round = previous_summary.get("sets_from_round", round_index - 1)

    best = val_f1 if previous_best is None else _nanmax(val_f1, previous_best)
    expected = sorted(sheet.loc[sheet["split"] == "train", "slide_id"].astype(str))
    summary: dict[str, Any] = {
        "round": round_index,
        "epoch": epoch,
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
