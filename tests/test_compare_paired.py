"""paired.csv's intervals, sign-flip p and verdict against float64 references written by hand.

The made-up table: 3 seeds x 4 test slides (2 tumor, 2 normal) x 3 patches, two methods ("a"
against the reference "b"), scores drawn at random. The references below recompute every AUC by
counting pairs and every draw from the documented order of the random stream, without touching
hnm's own AUC, draw or mean code.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hnm.compare.paired import (
    paired_differences,
    seeds_needed,
    sign_flip_p,
    smallest_sign_flip_p,
    two_level_draws,
    verdict,
)
from hnm.compare.spec import load_spec
from hnm.compare.summary import paired_section
from hnm.compare.table import FinalScores

SLIDES = ["t1", "t2", "n1", "n2"]
LABEL = {"t1": 1, "t2": 1, "n1": 0, "n2": 0}
TUMOR = {"t1": [1, 1, 0], "t2": [1, 0, 0], "n1": [0, 0, 0], "n2": [0, 0, 0]}
MIMIC = {"t1": [0, 0, 1], "t2": [0, 0, 0], "n1": [1, 0, 0], "n2": [0, 1, 0]}
SEEDS = [0, 1, 2]


def make_spec(folder: Path, seeds: list[int], methods: tuple[str, ...] = ("a", "b")) -> Path:
    path = folder / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cohort": {},
                "seeds": seeds,
                "reference": methods[-1],
                "methods": {m: {} for m in methods},
            }
        )
    )
    return path


def made_up_runs(seed: int = 11) -> dict[tuple[str, int], dict[str, dict]]:
    """Per (method, seed): patch scores per slide and a slide probability, at random."""
    rng = np.random.default_rng(seed)
    return {
        (m, s): {
            "patch": {slide: rng.random(3) for slide in SLIDES},
            "prob": {slide: float(rng.random()) for slide in SLIDES},
        }
        for m in ("a", "b")
        for s in SEEDS
    }


def as_final_scores(run: dict[str, dict]) -> FinalScores:
    scores = FinalScores.__new__(FinalScores)
    scores.patches = {
        s: (run["patch"][s], np.array(TUMOR[s], bool), np.array(MIMIC[s], bool)) for s in SLIDES
    }
    scores.slides = {s: (run["prob"][s], LABEL[s]) for s in SLIDES}
    return scores


def pair_auc(positives: list[float], negatives: list[float]) -> float:
    """Share of (positive, negative) pairs the positive wins, ties counting one half."""
    if not positives or not negatives:
        return float("nan")
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives]
    return float(np.mean(np.asarray(wins, dtype=np.float64)))


def reference_metric(run: dict[str, dict], name: str, slides: list[str]) -> float:
    if name == "test_slide_auc":
        return pair_auc(
            [run["prob"][s] for s in slides if LABEL[s]],
            [run["prob"][s] for s in slides if not LABEL[s]],
        )
    tumor, other = [], []
    for s in slides:  # a slide drawn twice counts its patches twice
        for score, is_tumor, is_mimic in zip(run["patch"][s], TUMOR[s], MIMIC[s]):
            if is_tumor:
                tumor.append(float(score))
            elif name == "test_patch_auc" or is_mimic:
                other.append(float(score))
    return pair_auc(tumor, other)


def finite_mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def percentile_interval(stats: list[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in stats if np.isfinite(v)], dtype=np.float64)
    return float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))


def reference_two_level_draws(seed: int, resamples: int) -> list[list[tuple[int, list[str]]]]:
    """The documented order: per resample, 3 seed indices, then 4 slide indices per drawn seed."""
    rng = np.random.default_rng([seed, 1])
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, 3, size=3)
        draws.append([(int(i), [SLIDES[j] for j in rng.integers(0, 4, size=4)]) for i in picked])
    return draws


def test_two_level_draws_follow_the_documented_stream() -> None:
    got = two_level_draws([SLIDES] * 3, 50, np.random.default_rng([4, 1]))
    assert got == reference_two_level_draws(4, 50)
    # Some resample draws one seed twice, and its two occurrences get slide draws of their own.
    repeated = [draw for draw in got if len({i for i, _ in draw}) < 3]
    assert repeated
    assert any(
        a[1] != b[1]
        for draw in repeated
        for a, b in itertools.combinations(draw, 2)
        if a[0] == b[0]
    )


def test_paired_table_matches_a_float64_reference(tmp_path: Path) -> None:
    spec = load_spec(make_spec(tmp_path, SEEDS))
    runs = made_up_runs()
    final = {key: as_final_scores(run) for key, run in runs.items()}
    resamples, seed = 300, 5
    paired = paired_differences(spec, final, SLIDES, resamples, seed=seed).set_index("metric")

    two_level = reference_two_level_draws(seed, resamples)
    slide_rng = np.random.default_rng(seed)  # the first version's slide-only stream
    slide_draws = [list(slide_rng.choice(SLIDES, size=4)) for _ in range(resamples)]
    for name in ("test_patch_auc", "test_patch_auc_vs_mimic", "test_slide_auc"):

        def diff(s: int, slides: list[str], name: str = name) -> float:
            return reference_metric(runs["a", s], name, slides) - reference_metric(
                runs["b", s], name, slides
            )

        per_seed = [diff(s, SLIDES) for s in SEEDS]
        hierarchical = [finite_mean([diff(SEEDS[i], d) for i, d in draw]) for draw in two_level]
        slide_only = [finite_mean([diff(s, d) for s in SEEDS]) for d in slide_draws]
        row = paired.loc[name]
        assert row["difference"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert row["seed_differences"] == ", ".join(f"{v:+.3f}" for v in per_seed)
        low, high = percentile_interval(hierarchical)
        assert row["ci_seeds_slides_low"] == pytest.approx(low, abs=1e-12)
        assert row["ci_seeds_slides_high"] == pytest.approx(high, abs=1e-12)
        low, high = percentile_interval(slide_only)
        assert row["ci_slides_low"] == pytest.approx(low, abs=1e-12)
        assert row["ci_slides_high"] == pytest.approx(high, abs=1e-12)
        assert row["sign_flip_p"] == pytest.approx(sign_flip_by_hand(per_seed), abs=1e-12)
    # Some draws hold one class only (an undefined AUC), so the reference's skipping was exercised.
    assert any(
        not np.isfinite(reference_metric(runs["a", 0], "test_slide_auc", d)) for d in slide_draws
    )


def sign_flip_by_hand(d: list[float]) -> float:
    sums = [
        abs(sum(s * v for s, v in zip(signs, d)))
        for signs in itertools.product((1, -1), repeat=len(d))
    ]
    return float(np.mean([t >= abs(sum(d)) - 1e-12 for t in sums]))


def test_sign_flip_p_is_exact() -> None:
    # The 8 sign patterns of (0.16, 0.38, 0.44) sum to +-0.98, +-0.10, +-0.22 and +-0.66; the
    # observed -0.16 + 0.38 - 0.44 = -0.22, and |sum| >= 0.22 holds for 6 of the 8.
    assert sign_flip_p([-0.16, 0.38, -0.44]) == pytest.approx(6 / 8, abs=1e-15)
    # All of one sign: only the observed pattern and its mirror reach it, 2 of 2^n.
    assert sign_flip_p([0.1, 0.2, 0.3]) == pytest.approx(2 / 8, abs=1e-15)
    assert sign_flip_p([0.05, 0.07, 0.02, 0.09, 0.04, 0.06]) == pytest.approx(2 / 64, abs=1e-15)
    # (0.04, 0.44, 0.32, -0.50) sums to 0.30; of the 16 patterns only (+, -, -, -) and its mirror
    # fall short (|sum| 0.22): 14/16. The observed pattern must count itself, however the sum of
    # its flips rounds.
    assert sign_flip_p([0.04, 0.44, 0.32, -0.5]) == pytest.approx(14 / 16, abs=1e-15)
    # A mean of exactly 0 leaves every pattern at least as far from 0.
    assert sign_flip_p([0.1, 0.2, -0.3]) == 1.0
    assert np.isnan(sign_flip_p([0.1, float("nan")]))
    assert smallest_sign_flip_p(3) == 0.25 and seeds_needed(0.05) == 6 and seeds_needed(0.01) == 8


class Shifted:
    """A run whose metric is its level plus a small slide-dependent wobble of its own."""

    def __init__(self, level: float, rng: np.random.Generator, scale: float) -> None:
        self.level = level
        self.wobble = {s: float(rng.normal(0, scale)) for s in SLIDES}

    def metric(self, name: str, slides: list[str]) -> float:
        return self.level + float(np.mean([self.wobble[s] for s in slides]))


def shifted_runs(
    differences: list[float], seeds: list[int], scale: float = 0.01
) -> dict[tuple[str, int], Shifted]:
    rng = np.random.default_rng(3)
    final = {}
    for seed, d in zip(seeds, differences):
        final["b", seed] = Shifted(0.7, rng, scale)
        final["a", seed] = Shifted(0.7 + d, rng, scale)
    return final


def test_seeds_that_disagree_leave_it_undecided_even_when_the_slides_alone_would_not(
    tmp_path: Path,
) -> None:
    spec = load_spec(make_spec(tmp_path, SEEDS))
    final = shifted_runs([-0.16, 0.38, -0.44], SEEDS)
    paired = paired_differences(spec, final, SLIDES, 1000)
    row = paired[paired["metric"] == "test_patch_auc"].iloc[0]
    assert row["ci_slides_high"] < 0  # the slide-only interval alone would call it worse
    assert row["ci_seeds_slides_low"] < 0 < row["ci_seeds_slides_high"]
    assert row["sign_flip_p"] == pytest.approx(0.75, abs=0.01)  # the wobble leaves the signs
    assert row["verdict"] == "undecided"
    # The sign rule on its own: a two-level interval that excludes 0, one seed the other way.
    assert verdict(0.01, 0.4, [0.5, 0.5, 0.5, -0.01]) == "undecided"
    assert verdict(0.01, 0.4, [0.5, 0.5, 0.5, 0.01]) == "better"
    assert verdict(-0.4, -0.01, [-0.5, -0.2, -0.1]) == "worse"
    assert verdict(float("nan"), 0.4, [0.5, 0.5]) == "undecided"


def test_six_consistent_seeds_and_a_clear_effect_say_better(tmp_path: Path) -> None:
    seeds = [0, 1, 2, 3, 4, 5]
    spec = load_spec(make_spec(tmp_path, seeds))
    final = shifted_runs([0.06, 0.09, 0.05, 0.08, 0.07, 0.10], seeds)
    paired = paired_differences(spec, final, SLIDES, 1000)
    assert set(paired["verdict"]) == {"better"}
    assert paired["ci_seeds_slides_low"].min() > 0
    assert np.allclose(paired["sign_flip_p"], 2 / 64)
    assert paired["seed_differences"].str.count(",").eq(5).all()


def test_the_summary_shows_per_seed_differences_and_what_the_seeds_can_decide(
    tmp_path: Path,
) -> None:
    spec = load_spec(make_spec(tmp_path, SEEDS))
    final = shifted_runs([-0.16, 0.38, -0.44], SEEDS, scale=0.0)
    paired = paired_differences(spec, final, SLIDES, 200)
    text = "\n".join(paired_section(spec, paired))
    assert "| a | test_patch_auc | -0.073 | -0.160, +0.380, -0.440 | [" in text
    assert "| undecided |" in text and "slides only" in text
    assert "smallest two-sided sign-flip p is 2/2^3 = 0.250" in text
    assert "never reach p < 0.05; that takes at least 6 seeds (2/2^6 = 0.031)" in text
    six = load_spec(make_spec(tmp_path, [0, 1, 2, 3, 4, 5]))
    text = "\n".join(paired_section(six, pd.DataFrame(columns=paired.columns)))
    assert "2/2^6 = 0.031, so the seeds alone can reach p < 0.05" in text
