"""The tiling stage: one slide -> its tiles HDF5 and QC PNG, or a failed-slide record in skip mode.

In a batch (`qc_path` None, the tiles going into a batch file's group) the QC picture is kept in
the slide's group as PNG bytes (`qc_png`) and returned, for the job's one stacked PNG.

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
from PIL import Image

from hnm.core.errors import SlideError
from hnm.io.h5io import OutPath, batch_file
from hnm.tile import qc
from hnm.tile.grid import TilingResult, failed_attrs, tile_slide, write_tiles_file
from hnm.tile.settings import TileSettings

log = logging.getLogger("hnm.tile")


def tile_to_files(
    slide: str | os.PathLike[str],
    slide_id: str,
    out: OutPath,
    qc_path: str | os.PathLike[str] | None,
    settings: TileSettings,
    mpp: float | None = None,
) -> Image.Image:
    """Write `out` (tiles) and `qc_path` (QC image) for one slide, or with `qc_path` None keep the
    QC image in the tiles; returns the QC image. `mpp` overrides the slide's metadata."""
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
        image = qc.render_failed(slide_id, str(slide), reason)
        _write(out, qc_path, image, [], attrs, [])
        return image

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
        _write(out, qc_path, image, result.coords, attrs, result.tissue_fraction)
        log.info(
            "%s: wrote %s (%.3f s)%s",
            slide_id,
            out,
            time.perf_counter() - started,
            f" and {qc_path}" if qc_path is not None else "",
        )
        return image
    finally:
        result.osr.close()


def _write(
    out: OutPath,
    qc_path: str | os.PathLike[str] | None,
    image: Image.Image,
    coords: np.ndarray | list[list[int]],
    attrs: dict,
    tissue_fraction: np.ndarray | list[float],
) -> None:
    """The tiles, and the QC picture beside them (a PNG file) or in them (`qc_png`)."""
    if qc_path is not None:
        qc.write_png(qc_path, image)
        write_tiles_file(out, coords, attrs, tissue_fraction)
        return
    write_tiles_file(
        out,
        coords,
        attrs,
        tissue_fraction,
        qc_png=np.frombuffer(qc.png_bytes(image), dtype=np.uint8),
    )


def tile_batch(
    slides: list[str],
    slide_ids: list[str],
    out: str | os.PathLike[str],
    qc_path: str | os.PathLike[str],
    settings: TileSettings,
    mpps: list[float | None],
) -> None:
    """Every slide into one batch tiles file (a group each, its QC picture inside) and their QC
    pictures stacked into one PNG; neither file appears unless every slide is done."""
    with batch_file(out) as batch:
        images = [
            tile_to_files(slide, slide_id, batch.slide(slide_id), None, settings, mpp)
            for slide, slide_id, mpp in zip(slides, slide_ids, mpps)
        ]
        qc.write_png(qc_path, qc.stack(images))
    log.info("wrote %s (%d slides) and %s", out, len(slides), qc_path)


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
