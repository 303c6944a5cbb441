"""Which rounds' features a run keeps (extract.keep_rounds), decided from the config alone.

Round r's features are read by round r's MIL and probe jobs (and, through them, by nothing else:
mining reads MIL scores, fine-tuning reads tiles, evaluation and the pictures read scores). With
keep_rounds K >= 1 the features of rounds 0..R-K are Snakemake temp() outputs, which Snakemake
deletes once every job of the run that reads them is done, and regenerates only when a job that
reads them must run again; the latest K rounds' are ordinary outputs, kept. Torch-free: the
workflow imports it while it parses.
"""

from __future__ import annotations


def pruned_rounds(rounds: int, keep: int) -> list[int]:
    """Rounds 0..`rounds` whose features are removed once used: all but the latest `keep`
    (none when keep is 0, which keeps every round)."""
    if rounds < 0 or keep < 0:
        raise ValueError(f"rounds and keep_rounds must be >= 0 (got {rounds} and {keep})")
    if keep == 0:
        return []
    return list(range(max(0, rounds + 1 - keep)))


def kept_rounds(rounds: int, keep: int) -> list[int]:
    """The other rounds of 0..`rounds`: those whose features stay on disk."""
    pruned = set(pruned_rounds(rounds, keep))
    return [r for r in range(rounds + 1) if r not in pruned]


def round_pattern(rounds: list[int]) -> str:
    """A wildcard constraint matching exactly these round numbers (Snakemake anchors it)."""
    if not rounds:
        raise ValueError("a round pattern needs at least one round")
    return "|".join(str(r) for r in rounds)
