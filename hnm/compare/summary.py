"""summary.md: the comparison's tables as Markdown, ready to paste into a README."""

from __future__ import annotations

import math

import pandas as pd

from hnm.compare.paired import seeds_needed, smallest_sign_flip_p
from hnm.compare.runner import RunRecord
from hnm.compare.spec import CompareSpec

FINAL_COLUMNS = (
    ("test_patch_auc", "test patch AUC"),
    ("test_patch_auc_vs_mimic", "tumor vs mimic patch AUC"),
    ("test_slide_auc", "test slide AUC"),
    ("test_accuracy", "test accuracy"),
    ("probe_test_auc", "linear probe: test patch AUC"),
    ("probe_test_auc_vs_mimic", "linear probe: tumor vs mimic"),
    ("mil_seeds_test_patch_auc_mean", "MIL over MIL seeds: test patch AUC"),
    ("mil_seeds_test_patch_auc_sd", "MIL seeds' sd of test patch AUC"),
    ("finetune_steps_total", "fine-tuning steps (all rounds)"),
    ("finetune_seconds_total", "fine-tuning s (all rounds)"),
)
MINING_COLUMNS = (
    ("pseudo_positive_tumor_share", "tumor among pseudo-positives"),
    ("curriculum_tumor_share", "tumor among curriculum positives"),
    ("hard_negative_mimic_share", "mimics among hard negatives"),
    ("pseudo_positive_slides", "positive slides with pseudo-positives"),
    ("pseudo_positive_top_slide_share", "pseudo-positives from the top slide"),
    ("hardneg_overlap_previous", "hard negatives kept from the previous round"),
)


def _cell(mean: float, sd: float, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_summary(
    spec: CompareSpec,
    table: pd.DataFrame,
    paired: pd.DataFrame,
    records: list[RunRecord],
    wall_seconds: float,
) -> str:
    seeds = ", ".join(str(s) for s in spec.seeds)
    lines = [
        "# Comparison",
        "",
        f"Methods at seeds {seeds} (mean ± standard deviation over seeds), written by "
        f"`hnm compare`. Whole comparison: {wall_seconds / 60:.1f} min of wall time "
        f"({len(records)} workflow runs, each counted over every invocation that ran it).",
        "",
        "## Final round, test split",
        "",
    ]
    last = table.groupby("method", sort=False).tail(1)
    rows = []
    for record in last.to_dict("records"):
        digits = [0 if name.startswith("finetune") else 3 for name, _ in FINAL_COLUMNS]
        rows.append(
            [f"{record['method']} (round {int(record['round'])})"]
            + [
                _cell(record.get(f"{name}_mean"), record.get(f"{name}_sd"), d)
                for (name, _), d in zip(FINAL_COLUMNS, digits)
            ]
        )
    lines += _markdown(["method"] + [label for _, label in FINAL_COLUMNS], rows)
    lines += [""] + paired_section(spec, paired)
    lines += ["", "## Every round", ""]
    per_round = [
        ("test_patch_auc", "test patch AUC"),
        ("test_patch_auc_vs_mimic", "tumor vs mimic"),
        ("test_slide_auc", "test slide AUC"),
        ("probe_test_auc", "linear probe"),
        ("mil_seeds_test_patch_auc_mean", "MIL seeds: patch AUC"),
        *MINING_COLUMNS,
    ]
    rows = [
        [str(r["method"]), str(int(r["round"]))]
        + [_cell(r.get(f"{name}_mean"), r.get(f"{name}_sd"), 2) for name, _ in per_round]
        for r in table.to_dict("records")
    ]
    lines += _markdown(["method", "round"] + [label for _, label in per_round], rows)
    lines += [
        "",
        "Mining columns: the patches a round mined (used to fine-tune the next round's encoder); "
        "the first three scored against the annotations, the last three without them (the "
        "run's own health signs, also in its rounds.csv); the last round mines nothing.",
        "",
        "## Wall time per workflow run",
        "",
    ]
    lines += _markdown(["run", "seconds"], [[r.name, f"{r.seconds:.0f}"] for r in records])
    return "\n".join(lines) + "\n"


def seeds_sentence(seeds: int, alpha: float = 0.05) -> str:
    """What the number of seeds allows the sign-flip test to say, with the numbers."""
    smallest = smallest_sign_flip_p(seeds)
    needed = seeds_needed(alpha)
    if smallest < alpha:
        return (
            f"With {seeds} seeds the smallest two-sided sign-flip p is 2/2^{seeds} = "
            f"{smallest:.3f}, so the seeds alone can reach p < {alpha:g}."
        )
    return (
        f"With {seeds} seed{'s' if seeds != 1 else ''} the smallest two-sided sign-flip p is "
        f"2/2^{seeds} = {smallest:.3f}, so the seeds alone can never reach p < {alpha:g}; that "
        f"takes at least {needed} seeds (2/2^{needed} = {smallest_sign_flip_p(needed):.3f})."
    )


def paired_section(spec: CompareSpec, paired: pd.DataFrame) -> list[str]:
    """The paired table with what each interval resamples, and what the seeds can decide."""
    seeds = ", ".join(str(s) for s in spec.seeds)
    lines = [
        f"## Against {spec.reference}, paired by seed",
        "",
        f"Each method's final round minus {spec.reference}'s at the same seed. *per seed*: the "
        f"differences at seeds {seeds}; *difference*: their mean; *seeds and slides*: 95% "
        "interval of a two-level bootstrap that draws seeds, and within each drawn seed its test "
        "slides, with replacement (one slide draw scores both methods of a seed); *slides only*: "
        "95% interval of a bootstrap over the test slides with the seeds held fixed, which "
        "leaves out how much the seed moves the result; *sign-flip p*: exact two-sided sign-flip p of the "
        "per-seed differences; *verdict*: better or worse only when the seeds-and-slides "
        "interval excludes 0 and every seed's difference has its sign. "
        + seeds_sentence(len(spec.seeds)),
        "",
    ]
    rows = [
        [
            str(r["method"]),
            str(r["metric"]),
            f"{r['difference']:+.3f}",
            str(r["seed_differences"]),
            f"[{r['ci_seeds_slides_low']:+.3f}, {r['ci_seeds_slides_high']:+.3f}]",
            f"[{r['ci_slides_low']:+.3f}, {r['ci_slides_high']:+.3f}]",
            f"{r['sign_flip_p']:.3f}",
            str(r["verdict"]),
        ]
        for r in paired.to_dict("records")
    ]
    header = [
        "method",
        "metric",
        "difference",
        "per seed",
        "95% interval, seeds and slides",
        "95% interval, slides only",
        "sign-flip p",
        "verdict",
    ]
    return lines + _markdown(header, rows)
