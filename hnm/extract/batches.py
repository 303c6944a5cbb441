"""Which slides share an extraction job, decided by each slide's id alone.

Cutting the sheet into consecutive runs of `slides_per_job` rows would make a slide's batch depend on
the rows before it: one slide inserted near the top would change every later batch, and Snakemake
would re-extract a cohort that was already done. Here a slide's place comes from the SHA-1 of its
id: batches are the leaves of a binary trie over the hash bits, a leaf being split while it holds
more than `slides_per_job` slides. Adding slides changes only the leaves they fall into (a leaf that
grows past the limit splits into its two halves); every other batch keeps its members and name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def hash_bits(slide_id: str) -> str:
    """The 160 bits of the id's SHA-1 as a string of 0/1: the slide's path down the trie."""
    digest = hashlib.sha1(slide_id.encode("utf-8")).digest()
    return "".join(f"{byte:08b}" for byte in digest)


def extraction_batches(slide_ids: Iterable[str], slides_per_job: int) -> dict[str, list[str]]:
    """{batch name: sorted slide ids}; names are `b` plus the leaf's hash-bit prefix."""
    if slides_per_job < 1:
        raise ValueError(f"slides_per_job must be at least 1 (got {slides_per_job})")
    keyed = sorted((hash_bits(slide), slide) for slide in set(slide_ids))
    batches: dict[str, list[str]] = {}
    _split(keyed, "", slides_per_job, batches)
    return batches


def _split(
    keyed: list[tuple[str, str]], prefix: str, limit: int, batches: dict[str, list[str]]
) -> None:
    if not keyed:
        return
    if len(keyed) <= limit or len(prefix) == 160:
        batches["b" + prefix] = sorted(slide for _, slide in keyed)
        return
    depth = len(prefix)
    _split([item for item in keyed if item[0][depth] == "0"], prefix + "0", limit, batches)
    _split([item for item in keyed if item[0][depth] == "1"], prefix + "1", limit, batches)


def batches_by_split(split_of: Mapping[str, str], slides_per_job: int) -> dict[str, list[str]]:
    """`extraction_batches` within each split, named `{split}_{batch}`: batches that never mix
    splits. The workflow batches tiling and extraction this way, since the training stages read
    the train slides' tiles files: a validation or test slide added later must not rewrite one of
    them (and so pretrain the round-0 encoder again, and extract every round anew)."""
    batches: dict[str, list[str]] = {}
    for split in sorted(set(split_of.values())):
        members = [slide for slide, where in split_of.items() if where == split]
        for name, slides in extraction_batches(members, slides_per_job).items():
            batches[f"{split}_{name}"] = slides
    return batches
