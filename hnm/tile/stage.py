"""The tiling stage: one slide -> its tiles HDF5 and QC PNG, or a failed-slide record in skip mode.

With on_slide_error skip a slide that cannot be opened or read (or has no usable resolution) does
not fail the job: its tiles file is written with 0 patches and failed=True plus the reason, so a
cohort run goes on and every later stage excludes the slide (and `hnm failures` lists it). With
fail the SlideError propagates and nothing is written, so a rerun retries it.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from hnm.core.errors import SlideError
from hnm.tile import qc
from hnm.tile.grid import TilingResult, failed_attrs, tile_slide, write_tiles_file
from hnm.tile.settings import TileSettings

log = logging.getLogger("hnm.tile")


def tile_to_files(
    slide: str | os.PathLike[str],
    slide_id: str,
    out: str | os.PathLike[str],
    qc_path: str | os.PathLike[str],
    settings: TileSettings,
    mpp: float | None = None,
) -> None:
    """Write `out` (tiles) and `qc_path` (QC image) for one slide; `mpp` overrides its metadata."""
    grid, tissue_params = settings.grid(), settings.tissue()
    try:
        result = tile_slide(slide, slide_id, grid, tissue_params, mpp)
    except SlideError as error:
        if settings.on_slide_error == "fail":
            raise
        # The reason alone: the hint (often "set on_slide_error: skip") is moot for a skipped slide.
        reason = error.problem
        log.warning("skipping slide '%s' (%s) (on_slide_error skip): %s", slide_id, slide, reason)
        attrs = failed_attrs(slide_id, str(slide), reason, grid, tissue_params)
        qc.write_png(qc_path, qc.render_failed(slide_id, str(slide), reason))
        write_tiles_file(out, [], attrs, tissue_fraction=[])
        return

    try:
        started = time.perf_counter()
        attrs = result.attrs
        legend = [
            f"{slide_id}: {attrs['n_patches']} patches of {grid.patch_size} px at "
            f"{grid.target_mpp:g} um/px (level-0 side {attrs['step_level0']} px; read "
            f"{attrs['read_size']} px at level {attrs['level']})",
            f"slide mpp {attrs['mpp']:.4g} um/px ({attrs['mpp_source']}); tissue "
            f"{100 * attrs['tissue_area_fraction']:.1f}% of the slide, mask at "
            f"{attrs['tissue_mask_mpp']:.2f} um/px, saturation > {attrs['tissue_threshold']:.0f}",
            f"green: tissue contour; blue: kept patches (tissue >= "
            f"{100 * grid.min_tissue_fraction:.0f}%, {attrs['n_grid']} grid cells)",
        ]
        image = qc_image(result, slide, slide_id, legend)
        attrs["timings"]["qc_s"] = time.perf_counter() - started
        started = time.perf_counter()
        qc.write_png(qc_path, image)
        write_tiles_file(out, result.coords, attrs, result.tissue_fraction)
        log.info(
            "%s: wrote %s (%.3f s) and %s",
            slide_id,
            out,
            time.perf_counter() - started,
            qc_path,
        )
    finally:
        result.osr.close()


def qc_image(
    result: TilingResult, slide: str | os.PathLike[str], slide_id: str, legend: list[str]
) -> np.ndarray:
    """The QC picture of a tiled slide: its thumbnail, tissue contour and kept patches."""
    rgb, downsample = qc.thumbnail(
        result.osr, str(slide), slide_id, result.tissue, result.dimensions
    )
    return qc.render_qc(
        rgb,
        downsample,
        result.tissue.mask,
        result.tissue.downsample,
        result.coords,
        result.attrs["step_level0"],
        legend,
    )
