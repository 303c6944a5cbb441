"""Signs, without patch truth, of whether a round's mining is healthy or poisoned.

A round-0 MIL that latches onto the wrong tissue (tumor-like benign regions, say) mines
pseudo-positives from it, fine-tuning then learns the error, and every later round mines from the
damage. Nothing in the metrics of one round shows this; the sets themselves do: pseudo-positives
that come from few slides, a share of positive-slide patches called positive far from the tumor
burden one expects, or sets that change wholesale from one round to the next (or never change,
when the gate keeps them). These numbers go into the mining summary and rounds.csv, so a user can
compare runs and rounds without annotations (docs/method.md, "Reading a run's health").
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _keys(sets: pd.DataFrame, name: str) -> set[tuple[str, int]]:
    chosen = sets[sets["set"] == name]
    return {(str(s), int(i)) for s, i in zip(chosen["slide_id"], chosen["idx"])}


def overlap(current: pd.DataFrame, previous: pd.DataFrame | None, name: str) -> float | None:
    """Jaccard index of set `name` between two rounds (None in round 0, or both sets empty)."""
    if previous is None:
        return None
    now, before = _keys(current, name), _keys(previous, name)
    union = now | before
    return len(now & before) / len(union) if union else None


def mining_health(
    sets: pd.DataFrame, per_slide: dict[str, dict[str, Any]], previous: pd.DataFrame | None
) -> dict[str, float | None]:
    """How spread the pseudo-positives are over the positive slides, what share of those slides'
    patches they are, and how much the pseudo-positives and hard negatives changed since the
    previous round's sets."""
    positives = {s: row for s, row in per_slide.items() if row["label"] == 1 and row["n_patches"]}
    counts = [row["pos"] for row in positives.values()]
    total = sum(counts)
    patches = sum(row["n_patches"] for row in positives.values())
    return {
        "pseudo_positive_slides": (
            sum(1 for c in counts if c > 0) / len(counts) if counts else None
        ),
        "pseudo_positive_top_slide_share": max(counts) / total if total else None,
        "pseudo_positive_fraction": total / patches if patches else None,
        "pos_overlap_previous": overlap(sets, previous, "pos"),
        "hardneg_overlap_previous": overlap(sets, previous, "hardneg"),
    }
