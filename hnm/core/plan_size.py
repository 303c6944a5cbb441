"""A note, before Snakemake goes quiet, that a large cohort takes a while to plan.

Snakemake builds the whole DAG before its first job, at every run, resume and `-n`, and prints
nothing meanwhile. On a large cohort that silence lasts up to a minute or more, long enough to look
like a hang. bench/bench_plan.py measured 10,000 slides on a 2-core Intel Xeon: paper.yaml (21
rounds of features, tiling and extraction 32 slides a job, one file per batch) in 47 s of CPU, and
config.yaml (3 rounds, one tiling job per slide) in 71 s. Planning grows with the jobs and the
files they name (docs/performance.md, "Planning a large cohort").
"""

from __future__ import annotations

# Slides x rounds of features from which planning takes tens of seconds or more: 5,000 slides at
# paper.yaml's 20 rounds (21 sets of features), half the cohort measured in 47 s.
NOTE_FROM = 100_000

# Measured CPU seconds to plan 10,000 slides, by config, on the tree of the commit that set
# paper.yaml's 32 slides a job (docs/performance.md).
MEASURED = (
    ("paper.yaml, 21 rounds, 32 slides a job", 47.0),
    ("config.yaml, 3 rounds, one tiling job per slide", 70.9),
)


def planning_note(slides: int, rounds: int) -> str | None:
    """What to expect before the first job, or None for a cohort that plans in seconds.

    `rounds` is the config's `rounds`: rounds 0..rounds each extract features for every slide."""
    feature_sets = rounds + 1
    if slides * feature_sets < NOTE_FROM:
        return None
    measured = "; ".join(f"{config}: {seconds:.0f} s" for config, seconds in MEASURED)
    return (
        f"hnm: planning {slides:,} slides x {feature_sets} rounds of features: Snakemake builds "
        "the whole plan before its first job and prints nothing meanwhile; at this size that "
        f"takes up to a minute or more (10,000 slides on a 2-core Xeon, CPU time: {measured}; "
        "batches of more slides plan faster, tile.slides_per_job and extract.slides_per_job; "
        'docs/performance.md, "Planning a large cohort")'
    )
