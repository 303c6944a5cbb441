"""A note, before Snakemake goes quiet, that a large cohort takes minutes to plan.

Snakemake builds the whole DAG before its first job, at every run, resume and `-n`, and prints
nothing meanwhile. On a large cohort that silence lasts minutes (bench/bench_plan.py measured
paper.yaml's 21 rounds of features at 1,000 slides in 33 s of CPU and at 10,000 slides in 20 min,
on a 2-core Intel Xeon), long enough to look like a hang. The cost grows with the features files the
plan names, one per slide and round, and faster than linearly (docs/performance.md, "Planning a
large cohort").
"""

from __future__ import annotations

# Slides x rounds of features from which planning takes tens of seconds or more: 1,000 slides at
# paper.yaml's 20 rounds (21 sets of features) took 33 s of CPU.
NOTE_FROM = 20_000

# Measured CPU seconds to plan paper.yaml (21 rounds of features) by cohort size, at commits
# 3db765b, 9127020 and 8f27730 respectively (docs/performance.md).
MEASURED = ((1_000, 32.5), (3_000, 153.6), (10_000, 1_182.6))


def planning_note(slides: int, rounds: int) -> str | None:
    """What to expect before the first job, or None for a cohort that plans in seconds.

    `rounds` is the config's `rounds`: rounds 0..rounds each extract features for every slide."""
    feature_sets = rounds + 1
    if slides * feature_sets < NOTE_FROM:
        return None
    measured = ", ".join(f"{n:,} slides {seconds / 60:.1f} min" for n, seconds in MEASURED)
    return (
        f"hnm: planning {slides:,} slides x {feature_sets} rounds of features: Snakemake builds "
        "the whole plan before its first job and prints nothing meanwhile; at this size that "
        f"takes minutes (21 rounds on a 2-core Xeon: {measured} of CPU; "
        'docs/performance.md, "Planning a large cohort")'
    )
