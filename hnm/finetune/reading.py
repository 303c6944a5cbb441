"""Reading fine-tuning's patches: one reader per slide of the mined sets, steps read ahead by
loader processes, and unreadable slides left out under on_slide_error: skip."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch

from hnm.core.errors import HnmError, SlideError
from hnm.finetune.plan import Pools, StepPlan
from hnm.io.h5io import SlideData, read_tiles_or_fail, slide_file
from hnm.io.patches import JpegTileReader, PatchReader, ReadFailure, open_patch_reader

log = logging.getLogger("hnm.finetune.train")


class StepPatches(torch.utils.data.Dataset):
    """Dataset of steps: item i = uint8 patches (n, P, P, 3) of plan i, read slide by slide.

    Readers are opened lazily inside each loader process and stay open for the whole round.
    """

    def __init__(self, plans: list[StepPlan], readers: list[PatchReader | JpegTileReader]) -> None:
        self.plans = plans
        self.readers = readers

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, index: int) -> torch.Tensor | ReadFailure:
        rows = self.plans[index].rows
        size = self.readers[0].patch_size
        out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        for code in np.unique(rows[:, 0]):
            where = np.flatnonzero(rows[:, 0] == code)
            order = np.argsort(rows[where, 1], kind="stable")  # nearby patches read together
            reader = self.readers[code]
            try:
                out[where[order]] = reader.read(rows[where[order], 1])
            except SlideError as error:
                return ReadFailure(error.slide_id, error.path, error.problem, error.hint)
        return torch.from_numpy(out)


def open_readers(
    slides: list[str], sheet: pd.DataFrame, tiles_files: dict[str, SlideData], sets: pd.DataFrame
) -> list[PatchReader | JpegTileReader]:
    """One patch reader per slide of the sets, checked against the sheet and its tiles file.

    The readers come from open_patch_reader, like extraction's: JPEG tiles where the slide allows,
    and (exact) only where they give openslide's pixels bit for bit, so a round trains on the same
    pixels whichever reader it gets. They keep no decoded tiles between reads: steps sample the
    whole slide at random, so a cache would rarely hit and, per slide and loader process, would
    add up.
    """
    paths = sheet.set_index("slide_id")["path"].to_dict()
    largest = sets.groupby("slide_id")["idx"].max().to_dict()
    readers = []
    sizes = set()
    for slide in slides:
        if slide not in paths:
            raise HnmError(f"slide '{slide}' is in the sets file but not in the sheet")
        tiles = slide_file(tiles_files, slide, "tiles")
        coords, attrs = read_tiles_or_fail(tiles)
        if attrs.get("failed"):
            raise HnmError(
                f"slide '{slide}' is marked failed in {tiles} ({attrs.get('error')}) but has mined "
                "patches; the sets do not match the tiles (re-run mining)"
            )
        if largest[slide] >= len(coords):
            raise HnmError(
                f"sets name patch {largest[slide]} of slide '{slide}', but {tiles} has "
                f"{len(coords)} patches; the sets come from another tiling (re-run the round)"
            )
        reader = open_patch_reader(paths[slide], coords, attrs, slide, cache_mb=0, exact=True)
        sizes.add(reader.patch_size)
        readers.append(reader)
    if len(sizes) > 1:
        raise HnmError(
            f"tiles files disagree on patch_size ({sorted(sizes)}); tile all slides alike"
        )
    return readers


def usable_pools(
    sets: pd.DataFrame,
    sets_path: str,
    sheet: pd.DataFrame,
    tiles_files: dict[str, SlideData],
    skipped: dict[str, dict[str, str]],
    skip: bool,
) -> tuple[Pools, list[PatchReader | JpegTileReader]]:
    """Pools and readers of the sets' slides but the skipped ones; with `skip`, a slide that
    cannot even be opened joins them."""
    while True:
        kept = sets[~sets["slide_id"].isin(list(skipped))]
        pools = Pools.from_sets(kept, sets_path)
        try:
            return pools, open_readers(pools.slides, sheet, tiles_files, kept)
        except SlideError as error:
            if not skip:
                raise
            skip_slide(skipped, error, None)


def skip_slide(
    skipped: dict[str, dict[str, str]], error: SlideError, global_epoch: int | None
) -> None:
    if error.slide_id in skipped:  # the same slide twice: the error is not the slide's
        raise error
    skipped[error.slide_id] = {"path": os.fspath(error.path), "error": error.problem}
    log.error(
        "%s: %s; on_slide_error=skip: its patches leave this round's sets%s",
        error.slide_id,
        error.problem,
        "" if global_epoch is None else f" and epoch {global_epoch} starts again without them",
    )
