"""Tissue detection on a low-resolution image of the whole slide.

Why this recipe: H&E tissue is coloured and glass is grey-white, so HSV saturation separates them
across stain and scanner variation better than brightness does (pale fat is bright, dark debris is
dark). Otsu adapts the cut to each slide's stain strength; a fixed floor under it keeps a blank
slide blank (Otsu always splits a histogram in two, even one made only of scanner noise). Every
size is in microns, converted with the mask's own resolution, so the same settings mean the same
tissue whether a slide was scanned at 20x or 40x and whichever pyramid level happened to be read.

The low-resolution image is read whole from the pyramid level nearest `tissue_mpp`. pyvips decodes
a whole TIFF page several times faster than openslide (threaded, no per-tile cache round trip), so
it is used where the openslide level maps to a TIFF page one to one; openslide remains the
reference reader and the fall-back, and any pyvips doubt (a corrupt tile, an odd pixel format)
goes back to openslide, whose errors become SlideErrors naming the slide.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import openslide

# scipy, openslide and pyvips are imported where used, so `hnm tile --help` (which builds its
# flags from TileSettings) stays instant.

log = logging.getLogger(__name__)

# A level up to this much coarser than asked is still taken: pyramids are rarely exact powers of
# two of the wished resolution (Aperio levels are 4.0016x apart), and reading a slightly coarser
# level is far cheaper than reading the next finer one and shrinking it.
LEVEL_TOLERANCE = 1.25
# openslide vendors whose levels are plain TIFF pages that pyvips' tiffload decodes identically.
# Other formats (NDPI, MRXS, SCN, BIF...) stitch or offset tiles, so only openslide reads them.
PYVIPS_VENDORS = frozenset({"aperio", "generic-tiff"})
# Pixels read per openslide strip when a level is too big to read at once (bounded memory).
STRIP_PIXELS = 16 * 1024 * 1024
# Pixels excluded from the Otsu histogram: padding outside the scanned area (openslide returns it
# transparent, read as white) and black borders say nothing about this slide's stain.
WHITE_MIN_CHANNEL = 250
BLACK_MAX_CHANNEL = 5


@dataclass(frozen=True)
class TissueParams:
    """What tissue detection needs, all sizes physical; made by
    hnm.tile.settings.TileSettings.tissue(), which holds the defaults, bounds and the reasons
    for them."""

    tissue_mpp: float
    median_um: float
    closing_um: float
    min_tissue_area_um2: float
    max_hole_area_um2: float
    min_saturation: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class LowRes:
    """A whole-slide RGB image at reduced resolution; `downsample` is level-0 px per pixel."""

    rgb: np.ndarray
    level: int
    downsample: float
    reader: str


@dataclass(frozen=True)
class TissueMask:
    mask: np.ndarray  # bool (H, W), True = tissue
    mask_mpp: float
    downsample: float  # level-0 pixels per mask pixel
    threshold: float  # saturation cut actually used (tissue = saturation > threshold)
    otsu_threshold: float
    level: int
    reader: str
    rgb: np.ndarray  # the image the mask was computed on, reused for the QC thumbnail


# ---------------------------------------------------------------------------- low-resolution read


def read_downsampled(
    osr: openslide.OpenSlide, path: str, slide_id: str, downsample: float
) -> LowRes:
    """The whole slide at about `downsample` (level-0 px per pixel), never coarser than 1.25x it.

    Reads the coarsest level not much coarser than asked and shrinks it by an integer box average
    when the pyramid has nothing near (a single-level slide is read strip by strip, so memory stays
    bounded however large level 0 is).
    """
    downsamples = [float(d) for d in osr.level_downsamples]
    coarsest_allowed = max(downsample, 1.0) * LEVEL_TOLERANCE
    level = max(i for i, d in enumerate(downsamples) if d <= coarsest_allowed or i == 0)
    level_downsample = downsamples[level]
    factor = max(1, int(round(downsample / level_downsample)))
    vendor = osr.properties.get("openslide.vendor", "")
    if vendor in PYVIPS_VENDORS:
        rgb = _read_pyvips(path, tuple(osr.level_dimensions[level]), factor)
        if rgb is not None:
            return LowRes(rgb, level, level_downsample * factor, "pyvips")
    rgb = _read_openslide(osr, path, slide_id, level, factor)
    return LowRes(rgb, level, level_downsample * factor, "openslide")


def _read_pyvips(path: str, size: tuple[int, int], factor: int) -> np.ndarray | None:
    """The TIFF page of this size, shrunk by `factor`; None (use openslide) on any doubt."""
    try:
        import pyvips
    except (ImportError, OSError) as error:  # pyvips present but libvips missing raises OSError
        log.debug("pyvips unavailable (%s); reading with openslide", error)
        return None
    try:
        first = pyvips.Image.new_from_file(path, access="random", fail_on="warning")
        pages = first.get("n-pages") if first.get_typeof("n-pages") else 1
        image = None
        for page in range(pages):
            candidate = pyvips.Image.new_from_file(
                path, page=page, access="random", fail_on="warning"
            )
            if (candidate.width, candidate.height) == size:
                image = candidate
                break
        if (
            image is None
            or image.format != "uchar"
            or image.bands not in (3, 4)
            or image.interpretation not in ("srgb", "rgb")
        ):
            log.debug("%s: no plain RGB TIFF page of size %s; reading with openslide", path, size)
            return None
        if image.bands == 4:
            image = image.flatten(background=[255, 255, 255])
        if factor > 1:
            width = math.ceil(size[0] / factor) * factor
            height = math.ceil(size[1] / factor) * factor
            if (width, height) != size:
                image = image.embed(0, 0, width, height, extend="copy")
            image = image.shrink(factor, factor)
        rgb = image.numpy()
    except pyvips.Error as error:
        log.debug("pyvips could not read %s (%s); reading with openslide", path, error)
        return None
    return np.ascontiguousarray(rgb.astype(np.uint8, copy=False))


def _read_openslide(
    osr: openslide.OpenSlide, path: str, slide_id: str, level: int, factor: int
) -> np.ndarray:
    from hnm.io.slide import read_rgb

    width, height = osr.level_dimensions[level]
    level_downsample = float(osr.level_downsamples[level])
    rows = max(factor, (STRIP_PIXELS // max(width, 1)) // factor * factor)
    strips = []
    for top in range(0, height, rows):
        strip_height = min(rows, height - top)
        location = (0, int(round(top * level_downsample)))
        strip = read_rgb(osr, location, level, (width, strip_height), slide_id, path)
        strips.append(block_mean(strip, factor) if factor > 1 else strip)
    return np.concatenate(strips, axis=0)


def block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks; the ragged last row/column of blocks is averaged as is."""
    starts_y = np.arange(0, rgb.shape[0], factor)
    starts_x = np.arange(0, rgb.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(rgb.astype(np.uint32), starts_y, 0), starts_x, 1)
    counts_y = np.diff(np.append(starts_y, rgb.shape[0]))
    counts_x = np.diff(np.append(starts_x, rgb.shape[1]))
    counts = (counts_y[:, None] * counts_x[None, :])[..., None]
    return ((sums + counts // 2) // counts).astype(np.uint8)


# ---------------------------------------------------------------------------- segmentation


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation on a 0-255 scale: (max - min) / max, rounded; 0 for black."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # pairwise: ~4x faster than max(-1)
    high = np.maximum(np.maximum(red, green), blue).astype(np.uint16)
    spread = high - np.minimum(np.minimum(red, green), blue)
    # 255 * 255 + 127 fits in uint16, so no wider type (and no extra pass over memory) is needed
    return ((spread * 255 + high // 2) // np.maximum(high, 1)).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's cut for uint8 values: class 'above' is values > t. NaN when there is nothing to split.

    Maximises the between-class variance w0 * w1 * (mu0 - mu1)^2 over t = 0..254; on ties the
    lowest t wins.
    """
    values = np.asarray(values).ravel()
    if values.size == 0:
        return float("nan")
    counts = np.bincount(values.astype(np.int64), minlength=256)[:256].astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(counts)  # pixels with value <= t
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(counts * levels)
    sum1 = sum0[-1] - sum0
    with np.errstate(invalid="ignore", divide="ignore"):
        between = weight0 * weight1 * (sum0 / weight0 - sum1 / weight1) ** 2
    between = np.nan_to_num(between[:255], nan=-1.0)
    if between.max() <= 0:  # a single value: no split exists
        return float("nan")
    return float(np.argmax(between))


def disc(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius * radius


def close_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disc; padded so tissue touching the image border is not eroded."""
    if radius < 1:
        return mask
    from scipy import ndimage

    padded = np.pad(mask, radius + 1, mode="edge")
    closed = ndimage.binary_closing(padded, structure=disc(radius))
    return closed[radius + 1 : -(radius + 1), radius + 1 : -(radius + 1)]


def remove_small_components(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Drop 8-connected components with fewer than `min_pixels` pixels."""
    if min_pixels <= 1 or not mask.any():
        return mask
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    """Fill background regions enclosed by tissue that have at most `max_pixels` pixels.

    A hole is 4-connected background that does not touch the image border (so a gap between two
    tissue pieces that opens to the border is never a hole).
    """
    if max_pixels <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, count = ndimage.label(holes)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    fill = sizes <= max_pixels
    fill[0] = False
    return mask | fill[labels]


def median_above(values: np.ndarray, kernel: int, threshold: float) -> np.ndarray:
    """Exactly median_filter(values, kernel, mode='nearest') > threshold, in O(1) per pixel.

    With k*k (odd) values in a window, the median exceeds t if and only if at least (k*k + 1) / 2
    of them exceed t; counting those is a box sum. scipy's median filter costs O(k^2) per pixel
    (6 s for a 3000 x 3000 mask on one core); this takes a fraction of a second.
    """
    above = values > threshold
    if kernel <= 1:
        return above
    half = kernel // 2
    padded = np.pad(above, half, mode="edge").astype(np.int32)
    table = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(padded, axis=0, out=table[1:, 1:]), axis=1, out=table[1:, 1:])
    height, width = values.shape
    counts = (
        table[kernel : kernel + height, kernel : kernel + width]
        - table[:height, kernel : kernel + width]
        - table[kernel : kernel + height, :width]
        + table[:height, :width]
    )
    return counts >= (kernel * kernel + 1) // 2


def sampled_median(values: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """The median-filtered image ('nearest' edges) at every `stride`-th pixel in each direction.

    Only Otsu's histogram needs filtered values, and a regular sample of a million of them gives
    the same cut as all of them; the mask itself comes from median_above, exactly.
    """
    if kernel <= 1:
        return values[::stride, ::stride]
    half = kernel // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel))[::stride, ::stride]
    middle = kernel * kernel // 2
    rows_per_chunk = max(1, (1 << 25) // max(1, windows.shape[1] * kernel * kernel))
    out = np.empty(windows.shape[:2], dtype=values.dtype)
    for top in range(0, windows.shape[0], rows_per_chunk):
        chunk = windows[top : top + rows_per_chunk].reshape(-1, kernel * kernel)
        out[top : top + rows_per_chunk] = np.partition(chunk, middle, axis=1)[:, middle].reshape(
            -1, windows.shape[1]
        )
    return out


# Pixels whose filtered saturation feeds Otsu's histogram, at most (see sampled_median).
OTSU_SAMPLE = 1_000_000


def segment_tissue(
    rgb: np.ndarray, mpp: float, params: TissueParams
) -> tuple[np.ndarray, float, float]:
    """(mask, threshold used, Otsu's threshold) for an RGB image whose pixels are `mpp` um wide.

    Saturation, median blur, Otsu (ignoring pure white and black), floor, closing, small pieces
    removed, small holes filled.
    """
    sat = saturation(rgb)
    kernel = int(round(params.median_um / mpp))
    kernel += 1 - kernel % 2  # odd, so the filter is centred
    stride = max(1, math.ceil(math.sqrt(sat.size / OTSU_SAMPLE)))
    white = rgb[::stride, ::stride].min(axis=-1) >= WHITE_MIN_CHANNEL
    black = rgb[::stride, ::stride].max(axis=-1) <= BLACK_MAX_CHANNEL
    otsu = otsu_threshold(sampled_median(sat, kernel, stride)[~(white | black)])
    threshold = max(otsu, params.min_saturation) if not math.isnan(otsu) else 255.0
    mask = median_above(sat, kernel, threshold)
    mask = close_mask(mask, int(round(params.closing_um / mpp)))
    mask = remove_small_components(mask, params.min_tissue_area_um2 / mpp**2)
    mask = fill_small_holes(mask, params.max_hole_area_um2 / mpp**2)
    return mask, float(threshold), otsu


def detect_tissue(
    osr: openslide.OpenSlide,
    path: str,
    slide_id: str,
    slide_mpp: float,
    params: TissueParams,
) -> TissueMask:
    """Tissue mask of the whole slide at about `params.tissue_mpp`."""
    lowres = read_downsampled(osr, path, slide_id, params.tissue_mpp / slide_mpp)
    mask_mpp = slide_mpp * lowres.downsample
    mask, threshold, otsu = segment_tissue(lowres.rgb, mask_mpp, params)
    log.info(
        "%s: tissue mask %dx%d at %.2f um/px (level %d via %s), saturation threshold %.0f "
        "(Otsu %.0f), %.1f%% tissue",
        slide_id,
        mask.shape[1],
        mask.shape[0],
        mask_mpp,
        lowres.level,
        lowres.reader,
        threshold,
        otsu,
        100.0 * mask.mean() if mask.size else 0.0,
    )
    return TissueMask(
        mask=mask,
        mask_mpp=mask_mpp,
        downsample=lowres.downsample,
        threshold=threshold,
        otsu_threshold=otsu,
        level=lowres.level,
        reader=lowres.reader,
        rgb=lowres.rgb,
    )
