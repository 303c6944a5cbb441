"""The patch grid of one slide: which level-0 squares are tissue, and how to read them later.

Patches are defined physically (patch_size px at target_mpp um/px), so slides scanned at 20x and 40x
give patches of the same tissue area; the extractor reads each one at the pyramid level nearest that
resolution (never a coarser one) and resizes read_size -> patch_size. Only coordinates are stored.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hnm.core.errors import SlideError
from hnm.io.h5io import OutPath, write_tiles
from hnm.tile.tissue import TissueMask, TissueParams, detect_tissue

if TYPE_CHECKING:
    import openslide

# openslide and h5py are imported where used, so `hnm tile --help` (which builds its flags from
# TileSettings) stays instant.

log = logging.getLogger(__name__)

# A target resolution finer than the scan by more than this would need upsampling: invented detail
# that the encoder was never trained on, so it is refused rather than done silently.
UPSAMPLE_TOLERANCE = 0.10


@dataclass(frozen=True)
class GridParams:
    """What the patch grid needs; made by hnm.tile.settings.TileSettings.grid(), which holds
    the defaults, bounds and the reasons for them."""

    patch_size: int
    target_mpp: float
    overlap: float
    min_tissue_fraction: float


@dataclass(frozen=True)
class ReadPlan:
    """How a patch maps onto the slide: its level-0 side, the grid stride, where to read it."""

    step_level0: int
    stride_level0: int
    level: int
    level_downsample: float
    read_size: int


def plan_reads(
    level_downsamples: tuple[float, ...],
    slide_mpp: float,
    grid: GridParams,
    slide_id: str = "?",
    path: str = "?",
) -> ReadPlan:
    """Level-0 patch side, stride, read level and read size; refuses to upsample."""
    if grid.target_mpp < slide_mpp * (1 - UPSAMPLE_TOLERANCE):
        raise SlideError(
            slide_id,
            path,
            f"target resolution {grid.target_mpp} um/px is finer than the scan's {slide_mpp:.4g} "
            f"um/px; patches would have to be upsampled",
            f"use target_mpp >= {slide_mpp:.3g}, or leave this slide out of the sheet",
        )
    step_level0 = int(round(grid.patch_size * grid.target_mpp / slide_mpp))
    if step_level0 < 1:
        raise SlideError(slide_id, path, f"a patch would be {step_level0} level-0 pixels wide")
    stride_level0 = max(1, int(round(step_level0 * (1 - grid.overlap))))
    from hnm.io.slide import level_for_downsample

    level = level_for_downsample(level_downsamples, grid.target_mpp / slide_mpp)
    level_downsample = float(level_downsamples[level])
    read_size = int(round(step_level0 / level_downsample))
    return ReadPlan(step_level0, stride_level0, level, level_downsample, read_size)


def grid_coords(dimensions: tuple[int, int], step_level0: int, stride_level0: int) -> np.ndarray:
    """Top-left level-0 x, y of every patch lying wholly inside the slide, row by row."""
    width, height = dimensions
    xs = np.arange(0, width - step_level0 + 1, stride_level0, dtype=np.int64)
    ys = np.arange(0, height - step_level0 + 1, stride_level0, dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def tissue_fractions(
    mask: np.ndarray, downsample: float, coords: np.ndarray, step_level0: int
) -> np.ndarray:
    """Exact area fraction of tissue under each patch, for patches not aligned to mask pixels.

    The mask is a piecewise-constant image; its integral over [0, x] x [0, y] is exactly the
    bilinear interpolation of the summed-area table, so any real-valued rectangle's tissue area
    costs four interpolations. Mask outside its extent counts as background.
    """
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    x0 = coords[:, 0] / downsample
    y0 = coords[:, 1] / downsample
    side = step_level0 / downsample
    area = (
        _integral(table, x0 + side, y0 + side)
        - _integral(table, x0, y0 + side)
        - _integral(table, x0 + side, y0)
        + _integral(table, x0, y0)
    )
    return np.clip(area / (side * side), 0.0, 1.0).astype(np.float32)


def _integral(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tissue area in [0, x] x [0, y] (mask pixels), by bilinear interpolation of the SAT."""
    x = np.clip(x, 0, table.shape[1] - 1)
    y = np.clip(y, 0, table.shape[0] - 1)
    ix = np.minimum(np.floor(x).astype(np.int64), table.shape[1] - 2)
    iy = np.minimum(np.floor(y).astype(np.int64), table.shape[0] - 2)
    fx = x - ix
    fy = y - iy
    return (
        table[iy, ix] * (1 - fx) * (1 - fy)
        + table[iy, ix + 1] * fx * (1 - fy)
        + table[iy + 1, ix] * (1 - fx) * fy
        + table[iy + 1, ix + 1] * fx * fy
    )


@dataclass
class TilingResult:
    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict[str, Any]
    tissue: TissueMask
    dimensions: tuple[int, int]
    osr: openslide.OpenSlide = field(repr=False)


def tile_slide(
    path: str | os.PathLike[str],
    slide_id: str,
    grid: GridParams,
    tissue_params: TissueParams,
    mpp_override: float | None = None,
) -> TilingResult:
    """Tissue patches of one slide; every reader failure is a SlideError naming it.

    The slide stays open in the result so the QC thumbnail can be read without reopening it.
    """
    import openslide

    from hnm.io.slide import open_slide, slide_info

    path = os.fspath(path)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    osr = open_slide(path, slide_id)
    try:
        info = slide_info(osr, slide_id, path, mpp_override)
        plan = plan_reads(info.level_downsamples, info.mpp, grid, slide_id, path)
        timings["open_s"] = time.perf_counter() - started

        started = time.perf_counter()
        tissue = detect_tissue(osr, path, slide_id, info.mpp, tissue_params)
        timings["tissue_s"] = time.perf_counter() - started
    except openslide.OpenSlideError as error:
        # openslide latches the first read error on the handle; later calls raise it bare.
        osr.close()
        raise SlideError(
            slide_id,
            path,
            f"openslide failed: {error}",
            "the slide's data is probably corrupt; set on_slide_error: skip to exclude it",
        ) from error
    except BaseException:
        osr.close()
        raise

    started = time.perf_counter()
    candidates = grid_coords(info.dimensions, plan.step_level0, plan.stride_level0)
    if len(candidates) == 0:
        osr.close()
        raise SlideError(
            slide_id,
            path,
            f"the slide ({info.dimensions[0]} x {info.dimensions[1]} level-0 px) is smaller than "
            f"one patch ({plan.step_level0} level-0 px at {grid.target_mpp:g} um/px)",
            "leave it out of the sheet, or set on_slide_error: skip to exclude such slides",
        )
    fractions = tissue_fractions(tissue.mask, tissue.downsample, candidates, plan.step_level0)
    keep = fractions >= grid.min_tissue_fraction
    coords, kept_fractions = candidates[keep], fractions[keep]
    timings["grid_s"] = time.perf_counter() - started

    attrs: dict[str, Any] = {
        "slide_id": slide_id,
        "slide_path": path,
        "patch_size": grid.patch_size,
        "target_mpp": grid.target_mpp,
        "mpp": info.mpp,
        "mpp_source": info.mpp_source,
        "level": plan.level,
        "level_downsample": plan.level_downsample,
        "read_size": plan.read_size,
        "step_level0": plan.step_level0,
        "stride_level0": plan.stride_level0,
        "overlap": grid.overlap,
        "min_tissue_fraction": grid.min_tissue_fraction,
        "dimensions": list(info.dimensions),
        "n_grid": int(len(candidates)),
        "n_patches": int(len(coords)),
        "tissue_params": tissue_params.as_dict(),
        "tissue_threshold": tissue.threshold,
        "tissue_otsu_threshold": tissue.otsu_threshold,
        "tissue_mask_mpp": tissue.mask_mpp,
        "tissue_mask_level": tissue.level,
        "tissue_reader": tissue.reader,
        "tissue_area_fraction": float(tissue.mask.mean()) if tissue.mask.size else 0.0,
        "timings": timings,
        "failed": False,
        "error": "",
    }
    if len(coords) == 0:
        osr.close()
        raise SlideError(
            slide_id,
            path,
            f"no patch has {100 * grid.min_tissue_fraction:.0f}% tissue or more ({len(candidates)} "
            f"grid cells, {100 * attrs['tissue_area_fraction']:.1f}% of the slide detected as "
            "tissue), so the slide would have 0 patches",
            "check that it is the right file; lower tile.min_tissue_fraction or the tissue "
            "settings if it does hold tissue, or set on_slide_error: skip to exclude it",
        )
    log.info(
        "%s: %d of %d grid patches kept (%d level-0 px each, read %d px at level %d)",
        slide_id,
        len(coords),
        len(candidates),
        plan.step_level0,
        plan.read_size,
        plan.level,
    )
    return TilingResult(coords, kept_fractions, attrs, tissue, info.dimensions, osr)


def write_tiles_file(
    path: OutPath,
    coords: np.ndarray,
    attrs: dict[str, Any],
    tissue_fraction: np.ndarray | None = None,
    qc_png: np.ndarray | None = None,
) -> None:
    """The shared tiles layout (hnm.io.h5io.write_tiles) plus `tissue_fraction` and, in a batch
    file, the QC picture's PNG bytes (`qc_png`), written atomically (a file of its own, or a batch
    file's group)."""
    extra = {} if qc_png is None else {"qc_png": qc_png}
    if tissue_fraction is not None:
        extra["tissue_fraction"] = np.asarray(tissue_fraction, dtype=np.float32)
    write_tiles(path, coords, attrs, extra)


def failed_attrs(
    slide_id: str, path: str, error: str, grid: GridParams, tissue_params: TissueParams
) -> dict[str, Any]:
    """Attributes of a skipped slide: the same keys as a good one, unknown values as NaN / -1."""
    return {
        "slide_id": slide_id,
        "slide_path": path,
        "patch_size": grid.patch_size,
        "target_mpp": grid.target_mpp,
        "mpp": math.nan,
        "mpp_source": "",
        "level": -1,
        "level_downsample": math.nan,
        "read_size": 0,
        "step_level0": 0,
        "stride_level0": 0,
        "overlap": grid.overlap,
        "min_tissue_fraction": grid.min_tissue_fraction,
        "n_grid": 0,
        "n_patches": 0,
        "tissue_params": tissue_params.as_dict(),
        "failed": True,
        "error": error,
    }
