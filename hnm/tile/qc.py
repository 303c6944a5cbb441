"""QC images: what tissue was found and which patches were kept, at a glance, per slide.

A person scrolling through results/qc/ should spot a bad slide (pen marks taken for tissue, faint
tissue missed, a shifted grid) in a second, so the picture is the slide itself with the tissue
contour and the kept patches drawn on it, and a legend that says what the numbers were.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence

import numpy as np
import openslide
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from hnm.core.atomic import atomic_path
from hnm.core.errors import SlideError
from hnm.tile.tissue import TissueMask, read_downsampled

log = logging.getLogger(__name__)

MAX_SIDE = 1024
MIN_WIDTH = 640  # room for the legend on narrow or tiny slides
CONTOUR = (0, 200, 0)
PATCH_EDGE = (20, 80, 255, 255)
PATCH_FILL = (20, 80, 255, 60)
FAILED = (200, 0, 0)


def thumbnail(
    osr: openslide.OpenSlide,
    path: str,
    slide_id: str,
    tissue: TissueMask,
    dimensions: tuple[int, int],
    max_side: int = MAX_SIDE,
) -> tuple[np.ndarray, float]:
    """(RGB, level-0 px per pixel) of at most `max_side` px.

    Reuses the tissue-detection image when it is already that large (big slides: no second read);
    only smaller slides are read again at a finer resolution, which is cheap for them.
    """
    wanted = max(1.0, max(dimensions) / max_side)
    rgb, downsample = tissue.rgb, tissue.downsample
    if max(rgb.shape[:2]) < max_side and downsample > wanted * 1.25:
        try:
            lowres = read_downsampled(osr, path, slide_id, wanted)
            rgb, downsample = lowres.rgb, lowres.downsample
        except (SlideError, openslide.OpenSlideError) as error:
            log.warning("%s: QC thumbnail falls back to the tissue image: %s", slide_id, error)
    scale = max_side / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        downsample *= rgb.shape[1] / size[0]
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb, downsample


def render_qc(
    rgb: np.ndarray,
    downsample: float,
    mask: np.ndarray,
    mask_downsample: float,
    coords: np.ndarray,
    step_level0: int,
    legend: Sequence[str],
) -> Image.Image:
    """The thumbnail with the tissue contour (green) and kept patches (blue) and a legend below."""
    # Tiny slides are enlarged by whole pixels so the grid and the legend stay legible.
    zoom = max(1, int(MIN_WIDTH // 2 // max(1, max(rgb.shape[:2]))))
    if zoom > 1:
        rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
        downsample /= zoom
    height, width = rgb.shape[:2]

    # Tissue mask sampled at each thumbnail pixel centre (exact, whatever the two resolutions).
    iy = np.minimum(
        ((np.arange(height) + 0.5) * downsample / mask_downsample).astype(int), mask.shape[0] - 1
    )
    ix = np.minimum(
        ((np.arange(width) + 0.5) * downsample / mask_downsample).astype(int), mask.shape[1] - 1
    )
    on_thumb = mask[iy[:, None], ix[None, :]] if mask.size else np.zeros((height, width), bool)
    edge = on_thumb & ~ndimage.binary_erosion(on_thumb, iterations=2, border_value=0)
    image = rgb.copy()
    image[edge] = CONTOUR

    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    side = step_level0 / downsample
    for x, y in np.asarray(coords).reshape(-1, 2):
        box = (x / downsample, y / downsample, x / downsample + side - 1, y / downsample + side - 1)
        if side >= 4:
            draw.rectangle(box, fill=PATCH_FILL[:3] + (25,), outline=PATCH_EDGE, width=1)
        else:
            draw.rectangle(box, fill=PATCH_FILL)
    picture = Image.alpha_composite(Image.fromarray(image).convert("RGBA"), overlay).convert("RGB")
    return _with_legend(picture, legend)


def render_failed(slide_id: str, path: str, error: str) -> Image.Image:
    """A QC image for a slide that could not be tiled, so a gap in results/qc/ explains itself."""
    canvas = Image.new("RGB", (MIN_WIDTH, 72), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((12, 12), f"FAILED: {slide_id}", fill=FAILED, font=_font(22))
    draw.text((12, 44), "excluded from all later stages", fill=(0, 0, 0), font=_font(14))
    return _with_legend(canvas, [f"path: {path}", f"error: {error}"])


def write_png(path: str | os.PathLike[str], image: Image.Image) -> None:
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")


def png_bytes(image: Image.Image) -> bytes:
    """The picture as PNG bytes, as a batch tiles file keeps each slide's (dataset `qc_png`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stack(images: Sequence[Image.Image], gap: int = 24) -> Image.Image:
    """Pictures one under the other on white, `gap` px apart: one batch's QC pictures in one PNG,
    so a person pages through a thousand batches rather than ten thousand files."""
    if not images:
        raise ValueError("stack: no pictures")
    width = max(image.width for image in images)
    height = sum(image.height for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    top = 0
    for image in images:
        canvas.paste(image.convert("RGB"), (0, top))
        top += image.height + gap
    return canvas


def _with_legend(picture: Image.Image, legend: Sequence[str]) -> Image.Image:
    font = _font(14)
    width = max(picture.width, MIN_WIDTH)
    lines = [wrapped for line in legend for wrapped in _wrap(line, font, width - 24)]
    line_height = 18
    canvas = Image.new("RGB", (width, picture.height + 16 + line_height * len(lines)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((12, picture.height + 8 + index * line_height), line, fill=(0, 0, 0), font=font)
    return canvas


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap by rendered width (paths and messages can be long)."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
