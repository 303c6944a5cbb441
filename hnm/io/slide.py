"""Opening slides and reading pixels, with errors that name the slide.

Every reader failure (missing file, unsupported format, corrupt tiles) becomes a SlideError carrying
the slide id, the path and the reader's own message, so one bad slide fails only its own job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import openslide

from hnm.core.errors import SlideError

# Microscope scans run from about 0.1 um/px (100x oil) to a few um/px (1.25x). Values outside this
# range come from TIFF resolution tags that were never set for microscopy (e.g. 72 dpi defaults).
PLAUSIBLE_MPP = (0.05, 50.0)


@dataclass(frozen=True)
class SlideInfo:
    slide_id: str
    path: str
    mpp: float
    mpp_source: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    vendor: str


def open_slide(path: str | os.PathLike[str], slide_id: str) -> openslide.OpenSlide:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SlideError(slide_id, path, "file not found", "check the path in the slide sheet")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideError as error:
        raise SlideError(
            slide_id,
            path,
            f"openslide cannot open it: {error}",
            "the file may be truncated or in an unsupported format; "
            "set on_slide_error: skip to exclude such slides",
        ) from error


def level0_dimensions(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Level-0 width and height, or None when openslide cannot open the file.

    For checks made before tiling (annotation extents at sheet validation): an unreadable slide is
    reported by tiling, with the reader's message, so it is not an error here.
    """
    try:
        with openslide.OpenSlide(os.fspath(path)) as osr:
            return tuple(osr.dimensions)
    except (openslide.OpenSlideError, OSError):
        return None


def slide_mpp(
    osr: openslide.OpenSlide, slide_id: str, path: str, override: float | None = None
) -> tuple[float, str]:
    """Level-0 microns per pixel and where it came from ('sheet' or 'metadata')."""
    if override is not None and not np.isnan(override):
        if not PLAUSIBLE_MPP[0] <= override <= PLAUSIBLE_MPP[1]:
            raise SlideError(
                slide_id,
                path,
                f"the sheet's mpp {override} is outside {PLAUSIBLE_MPP} um/px",
                "give level-0 microns per pixel in the sheet's 'mpp' column (about 0.25 for a "
                "40x scan, 0.5 for 20x)",
            )
        return float(override), "sheet"
    raw_x = osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
    raw_y = osr.properties.get(openslide.PROPERTY_NAME_MPP_Y)
    if raw_x is None:
        raise SlideError(
            slide_id,
            path,
            "the slide has no resolution (no microns-per-pixel in its metadata)",
            "give it in the sheet's 'mpp' column",
        )
    mpp_x = float(raw_x)
    mpp_y = float(raw_y) if raw_y is not None else mpp_x
    if not (PLAUSIBLE_MPP[0] <= mpp_x <= PLAUSIBLE_MPP[1]):
        raise SlideError(
            slide_id,
            path,
            f"its metadata gives {mpp_x:.4g} um/px, outside the plausible range "
            f"{PLAUSIBLE_MPP[0]}-{PLAUSIBLE_MPP[1]} um/px for a microscope slide",
            "the resolution tags are probably unset; give the true mpp in the sheet's 'mpp' column",
        )
    if abs(mpp_x - mpp_y) / mpp_x > 0.01:
        raise SlideError(
            slide_id, path, f"non-square pixels ({mpp_x} x {mpp_y} um) are not supported"
        )
    return mpp_x, "metadata"


def slide_info(
    osr: openslide.OpenSlide, slide_id: str, path: str, mpp_override: float | None = None
) -> SlideInfo:
    mpp, source = slide_mpp(osr, slide_id, path, mpp_override)
    return SlideInfo(
        slide_id=slide_id,
        path=path,
        mpp=mpp,
        mpp_source=source,
        dimensions=tuple(osr.dimensions),
        level_dimensions=tuple(tuple(d) for d in osr.level_dimensions),
        level_downsamples=tuple(float(d) for d in osr.level_downsamples),
        vendor=osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
    )


def level_for_downsample(level_downsamples: tuple[float, ...], downsample: float) -> int:
    """The coarsest level that is still at least as fine as `downsample` (never upsample)."""
    best = 0
    for level, level_downsample in enumerate(level_downsamples):
        if level_downsample <= downsample * 1.01:
            best = level
    return best


def read_rgb(
    osr: openslide.OpenSlide,
    location: tuple[int, int],
    level: int,
    size: tuple[int, int],
    slide_id: str = "?",
    path: str = "?",
) -> np.ndarray:
    """An RGB uint8 array (H, W, 3); transparent areas (outside the scan) become white."""
    try:
        region = osr.read_region(location, level, size)
    except openslide.OpenSlideError as error:
        raise SlideError(
            slide_id,
            path,
            f"reading pixels at {location} (level {level}) failed: {error}",
            "the slide's tile data is probably corrupt; set on_slide_error: skip to exclude it",
        ) from error
    rgba = np.asarray(region)
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255
    return rgb.astype(np.uint8)
