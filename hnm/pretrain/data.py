"""The training split's patches for pretraining: which ones, in which batches, and reading them.

Pretraining sees every tissue patch of the training slides (no label, no mining), so its pool is
the union of the train slides' tiles files. Each epoch's batches are a pure function of (seed,
epoch), planned in the main process: a resumed job replays exactly the batches an uninterrupted one
would have drawn, however many loader processes read them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hnm.core.errors import HnmError, SlideError
from hnm.io.h5io import SlideData, read_tiles_or_fail, slide_file
from hnm.io.patches import JpegTileReader, PatchReader, ReadFailure, open_patch_reader

log = logging.getLogger(__name__)

Reader = PatchReader | JpegTileReader


@dataclass
class TrainingPatches:
    """The pool: rows (slide code, patch index) over `slides`, one reader per slide."""

    slides: list[str]
    rows: np.ndarray  # (n, 2) int64
    readers: list[Reader]

    @property
    def patch_size(self) -> int:
        return self.readers[0].patch_size


def training_patches(
    sheet: pd.DataFrame,
    tiles_files: dict[str, SlideData],
    skipped: dict[str, dict[str, str]] | None = None,
) -> TrainingPatches:
    """Every patch of the sheet's train slides, read through open_patch_reader like fine-tuning.

    Slides whose tiling failed (kept in the run by tile.on_slide_error: skip) have no patches and
    are left out with a log line. `skipped` (given in on_slide_error skip mode) holds the slides
    already found unreadable, which are left out, and gets those that cannot be opened now; without
    it such a slide is an error. A train slide without a tiles file among the inputs is an error,
    since the workflow passes exactly the train slides' files.
    """
    train = sheet[(sheet["split"] == "train") & ~sheet["slide_id"].isin(set(skipped or {}))]
    slides: list[str] = []
    rows: list[np.ndarray] = []
    readers: list[Reader] = []
    for slide, path in zip(train["slide_id"], train["path"], strict=True):
        tiles = slide_file(tiles_files, slide, "tiles")
        coords, attrs = read_tiles_or_fail(tiles)
        if attrs.get("failed") or len(coords) == 0:
            log.warning(
                "slide '%s' has no patches to pretrain on (%s); left out",
                slide,
                attrs.get("error") or "no tissue patches",
            )
            continue
        # exact=True, as in fine-tuning: the JPEG-tile reader only where it gives openslide's
        # pixels bit for bit. No tile cache: batches sample all slides at random.
        try:
            reader = open_patch_reader(path, coords, attrs, slide, cache_mb=0, exact=True)
        except SlideError as error:
            if skipped is None:
                raise
            skip_slide(skipped, error)
            continue
        readers.append(reader)
        rows.append(np.stack([np.full(len(coords), len(slides)), np.arange(len(coords))], axis=1))
        slides.append(slide)
    if not slides:
        raise HnmError("no training slide has patches to pretrain on (check the tiles files)")
    sizes = sorted({reader.patch_size for reader in readers})
    if len(sizes) > 1:
        raise HnmError(f"tiles files disagree on patch_size ({sizes}); tile all slides alike")
    return TrainingPatches(slides, np.concatenate(rows).astype(np.int64), readers)


def skip_slide(skipped: dict[str, dict[str, str]], error: SlideError) -> None:
    """Record an unreadable slide (on_slide_error: skip); the same slide twice means the error is
    not the slide's, so it is raised."""
    if error.slide_id in skipped:
        raise error
    skipped[error.slide_id] = {"path": str(error.path), "error": error.problem}
    log.error(
        "%s: %s; on_slide_error=skip: pretraining goes on without it", error.slide_id, error.problem
    )


def plan_epoch(
    pool_size: int,
    epoch: int,
    seed: int,
    batch_size: int,
    max_patches: int = 0,
    max_steps: int = 0,
) -> list[np.ndarray]:
    """Pool positions of each step of `epoch`: a fresh permutation (its first `max_patches` when
    set) cut into batches of `batch_size`, at most `max_steps` of them when set.

    A last batch of a single patch is dropped: its two views would have no negative to contrast
    with, so the step would cost a forward and backward pass for a constant loss.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(pool_size)
    if max_patches:
        order = order[:max_patches]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < 2:
        batches.pop()
    return batches[:max_steps] if max_steps else batches


class BatchPatches(torch.utils.data.Dataset):
    """Item i = uint8 patches (n, P, P, 3) of batch i, read slide by slide, nearby patches together.

    Readers open lazily inside each loader process and stay open for the whole job.
    """

    def __init__(self, batches: Iterable[np.ndarray], pool: TrainingPatches) -> None:
        self.batches = [pool.rows[b] for b in batches]
        self.readers = pool.readers
        self.size = pool.patch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> torch.Tensor | ReadFailure:
        rows = self.batches[index]
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        for code in np.unique(rows[:, 0]):
            where = np.flatnonzero(rows[:, 0] == code)
            where = where[np.argsort(rows[where, 1], kind="stable")]
            try:
                out[where] = self.readers[code].read(rows[where, 1])
            except SlideError as error:
                return ReadFailure(error.slide_id, error.path, error.problem, error.hint)
        return torch.from_numpy(out)
