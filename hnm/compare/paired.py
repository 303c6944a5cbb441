"""paired.csv: each method against the reference method at the same seed, and how sure that is.

Two things move a comparison's result: which test slides were scored, and the training seed
(through the MIL, which on a few dozen bags lands somewhere new at every seed). The first version
of this table resampled only the test slides, with the seeds held fixed, so its interval covered
the first alone; on a held-out demo cohort the per-seed differences were -0.16, +0.38 and -0.44
while that interval was [-0.119, -0.035]. Each row now carries:

- the per-seed differences themselves, so a reader sees the spread the mean hides;
- a two-level (hierarchical) paired bootstrap: each resample draws seeds with replacement and,
  within each drawn seed, that run's test slides with replacement; one slide draw scores both
  methods of that seed, so each seed's pair stays paired. The statistic is the mean over the drawn
  seeds of the paired difference, and the interval is its 2.5 and 97.5 percentiles;
- the slide-only interval of the first version (same draws as before), to compare old and new;
- an exact sign-flip test of the per-seed differences: under "no difference" each seed's sign is
  a coin flip, so the p-value is the share of the 2^n sign patterns whose mean is at least as far
  from 0 as the observed one. It can be no smaller than 2 / 2^n, which is why 3 seeds (0.25) can
  never reach p < 0.05 on their own;
- a verdict: "better" or "worse" only when the two-level interval excludes 0 and every seed's
  difference has its sign, otherwise "undecided". All paired metrics are AUCs: higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from hnm.compare.spec import MAX_SEEDS, CompareSpec

PAIRED = ("test_patch_auc", "test_patch_auc_vs_mimic", "test_slide_auc")
# The two-level draws use a stream of their own, so adding them left the slide-only draws (and so
# the slide-only interval) exactly what the first version gave for the same seed.
TWO_LEVEL_STREAM = 1


class Scores(Protocol):
    """What the paired table needs of a finished run (hnm.compare.table.FinalScores)."""

    def metric(self, name: str, slides: list[str]) -> float: ...


def two_level_draws(
    slides_per_seed: Sequence[Sequence[str]], resamples: int, rng: np.random.Generator
) -> list[list[tuple[int, list[str]]]]:
    """Per resample, (seed index, drawn test slides) for each of n seeds drawn with replacement.

    The order of random draws is part of the contract (tests reproduce it): per resample, first
    `rng.integers(0, n, size=n)` for the seeds, then for each drawn seed in that order
    `rng.integers(0, m, size=m)` over that seed's m test slides. A seed drawn twice gets two
    independent slide draws, as a two-stage bootstrap resamples each drawn cluster afresh.
    """
    n = len(slides_per_seed)
    draws = []
    for _ in range(resamples):
        seeds = rng.integers(0, n, size=n)
        resample = []
        for index in seeds:
            slides = slides_per_seed[int(index)]
            picks = rng.integers(0, len(slides), size=len(slides))
            resample.append((int(index), [slides[int(p)] for p in picks]))
        draws.append(resample)
    return draws


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip p of per-seed differences (NaN if any is not finite).

    Counts the sign patterns whose |mean| reaches the observed |mean|; a tolerance keeps a pattern
    that equals the observed one up to rounding (e.g. the all-flipped one) counted, as it must be.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0 or not np.all(np.isfinite(d)):
        return float("nan")
    if d.size > MAX_SEEDS:
        raise ValueError(f"the exact sign-flip test lists 2^n patterns; n = {d.size} is too many")
    # Bit k of pattern j flips seed k's sign: the flipped sum is the sum less twice the flipped.
    flips = ((np.arange(2**d.size, dtype=np.int32)[:, None] >> np.arange(d.size)) & 1).astype(
        np.uint8
    )
    means = np.abs(d.sum() - 2.0 * (flips @ d)) / d.size
    observed = abs(float(d.mean()))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def smallest_sign_flip_p(seeds: int) -> float:
    """The smallest two-sided p the sign-flip test can give with `seeds` differences: 2 / 2^n."""
    return 2.0 / 2**seeds


def seeds_needed(alpha: float = 0.05) -> int:
    """The fewest seeds whose smallest reachable sign-flip p is below `alpha` (6 for 0.05)."""
    return math.floor(math.log2(2.0 / alpha)) + 1


def verdict(low: float, high: float, differences: Sequence[float]) -> str:
    """Better or worse when the two-level interval excludes 0 and every seed agrees in sign."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0 or not np.all(np.isfinite(d)) or not (np.isfinite(low) and np.isfinite(high)):
        return "undecided"
    if low > 0 and np.all(d > 0):
        return "better"
    if high < 0 and np.all(d < 0):
        return "worse"
    return "undecided"


def signed_list(values: Sequence[float], digits: int = 3) -> str:
    """Per-seed differences as text, in seed order: "-0.160, +0.380, -0.440"."""
    return ", ".join("nan" if not np.isfinite(v) else f"{v:+.{digits}f}" for v in values)


def paired_differences(
    spec: CompareSpec,
    final: Mapping[tuple[str, int], Scores],
    test_slides: list[str],
    resamples: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Each method minus the reference at the same seed: per seed, mean, intervals, p, verdict.

    The slide-only draws come from `default_rng(seed)` as in the first version; the two-level
    draws from `default_rng([seed, TWO_LEVEL_STREAM])` through `two_level_draws`.
    """
    slide_rng = np.random.default_rng(seed)
    slide_draws = [
        list(slide_rng.choice(test_slides, size=len(test_slides))) for _ in range(resamples)
    ]
    two_level = two_level_draws(
        [test_slides] * len(spec.seeds),
        resamples,
        np.random.default_rng([seed, TWO_LEVEL_STREAM]),
    )
    methods = list(spec.methods)
    # Each run's metric on each draw, computed once and shared by every pairing with that run.
    full, by_slides, by_seeds_slides = {}, {}, {}
    for name in PAIRED:
        for m in methods:
            runs = [final[m, s] for s in spec.seeds]
            full[m, name] = np.array([run.metric(name, test_slides) for run in runs])
            by_slides[m, name] = np.array(
                [[run.metric(name, d) for run in runs] for d in slide_draws]
            )
            by_seeds_slides[m, name] = np.array(
                [[runs[i].metric(name, d) for i, d in draw] for draw in two_level]
            )
    rows = []
    reference = spec.reference
    for method in methods:
        if method == reference:
            continue
        for name in PAIRED:
            per_seed = full[method, name] - full[reference, name]
            slides_low, slides_high = _interval(
                _row_means(by_slides[method, name] - by_slides[reference, name])
            )
            low, high = _interval(
                _row_means(by_seeds_slides[method, name] - by_seeds_slides[reference, name])
            )
            rows.append(
                {
                    "method": method,
                    "reference": reference,
                    "metric": name,
                    "difference": float(_row_means(per_seed[None, :])[0]),
                    "seed_differences": signed_list(per_seed),
                    "ci_seeds_slides_low": low,
                    "ci_seeds_slides_high": high,
                    "ci_slides_low": slides_low,
                    "ci_slides_high": slides_high,
                    "sign_flip_p": sign_flip_p(per_seed),
                    "verdict": verdict(low, high, per_seed),
                    "seeds": len(spec.seeds),
                    "resamples": resamples,
                }
            )
    return pd.DataFrame(rows)


def _row_means(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite entries (NaN for a row with none: an AUC of one class)."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    sums = np.where(finite, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _interval(values: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval of the finite resample statistics."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))
