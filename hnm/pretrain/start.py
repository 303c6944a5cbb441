"""Where round 0's encoder comes from, said in one line when the workflow builds its DAG.

A run of 20 rounds from a random encoder looks like any other in a dry run, and its features are
far worse than pretrained ones; the choice (given weights, SimCLR on the cohort, or random) is made
by two settings in rules/common.smk, so the workflow prints this line before any job starts.
No torch here: the Snakefile imports it while parsing.
"""

from __future__ import annotations


def round0_start(weights: str, pretrain_epochs: int, arch: str) -> tuple[bool, str]:
    """(is a warning, the line) for the settings encoder.weights, pretrain.epochs, encoder.arch."""
    if weights:
        return False, f"hnm: round 0 starts from the {arch} encoder weights in {weights}"
    if pretrain_epochs > 0:
        return False, (
            f"hnm: round 0 starts from SimCLR pretraining of a random {arch} on the cohort's "
            f"train slides ({pretrain_epochs} epoch(s), rule pretrain); set encoder.weights to "
            "start from weights you have instead"
        )
    return True, (
        f"hnm: WARNING: round 0 starts from a RANDOM {arch} encoder (encoder.weights is empty and "
        "pretrain.epochs is 0): its features are far worse than pretrained ones and every round "
        "starts from them; set pretrain.epochs > 0 to pretrain on the cohort (SimCLR), or "
        "encoder.weights to a weights file"
    )
