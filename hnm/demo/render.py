"""Rendering any level-0 rectangle of a synthetic slide from its layout: stains, nuclei, texture.

A window's pixels are composed in stain space (haematoxylin and eosin amounts per pixel): soft
polygon coverage decides how much of each layer (stroma, tumor, mimic) shows, each layer brings its
cytoplasm and hashed nuclei, and Beer-Lambert turns the stains into RGB with a slow illumination
wave and sensor noise. Everything is a function of level-0 coordinates (textures.py), so tiles
rendered separately join seamlessly. Each tumor and mimic region gets a small optical-density
offset so its mean colour equals tumor tissue at large: only texture tells them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hnm.demo.layout import Layout
from hnm.demo.styles import (
    EOSIN,
    HAEMATOXYLIN,
    ILLUMINATION,
    STROMA_STYLE,
    TUMOR_STYLE,
    mimic_style,
)
from hnm.demo.textures import BANK, crop, fibre_bank, grain_bank, padded, site_uniforms

_GRAIN_SHIFT = {"tumor": 11, "mimic": 53, "stroma": 97}  # decorrelates the layers' chromatin


@dataclass(frozen=True)
class _Window:
    """A rectangle of level-0 pixels being rendered (the tile plus a margin for blurs)."""

    x: int
    y: int
    width: int
    height: int


class Scene:
    """Everything needed to render any level-0 rectangle of one slide."""

    def __init__(
        self, layout: Layout, rng: np.random.Generator, mpp: float, difficulty: float
    ) -> None:
        self.mpp = mpp
        fibre_angle = float(rng.uniform(0, np.pi))
        self.fibres = padded(fibre_bank(rng, fibre_angle, spacing_px=5.0 / mpp))
        self.grain = padded(grain_bank(rng, grain_px=0.6 / mpp))
        self.noise = padded(rng.standard_normal((BANK, BANK)).astype(np.float32))
        self.bank_offset = rng.integers(0, BANK, size=2)
        stain = rng.uniform(0.92, 1.08, size=2)  # this slide's staining batch
        self.h_scale, self.e_scale = float(stain[0]), float(stain[1])
        wave = rng.uniform(0, 2 * np.pi, size=2)
        self.wave = (float(wave[0]), float(wave[1]), 2 * np.pi * mpp / 1500.0)
        self.styles = {
            "tumor": TUMOR_STYLE,
            "mimic": mimic_style(difficulty),
            "stroma": STROMA_STYLE,
        }
        self.stroma_angle = fibre_angle
        self.lattice_offset = {name: rng.uniform(0, 1000.0, size=2) for name in self.styles}
        self.keys = {name: int(rng.integers(0, 2**63)) for name in self.styles}
        self.blur_nucleus = 0.35 / mpp
        self.blur_edge = 0.8 / mpp
        self.margin = int(math.ceil(3 * max(self.blur_nucleus, self.blur_edge))) + 1
        self.bboxes = {
            name: [(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()) for p in polys]
            for name, polys in (
                ("tissue", layout.tissue),
                ("tumor", layout.tumor),
                ("mimic", layout.mimic),
            )
        }
        self.polygons = {"tissue": layout.tissue, "tumor": layout.tumor, "mimic": layout.mimic}
        self.region_od = self._calibrate_regions()

    # -- the layers -----------------------------------------------------------------------------

    def _alphas(self, kind: str, window: _Window) -> list[tuple[int, np.ndarray]]:
        """Soft coverage of the window by each `kind` polygon that reaches into it, by index."""
        x1, y1 = window.x + window.width, window.y + window.height
        found = []
        for index, (bx0, by0, bx1, by1) in enumerate(self.bboxes[kind]):
            if bx1 < window.x or bx0 > x1 or by1 < window.y or by0 > y1:
                continue
            alpha = self._coverage([self.polygons[kind][index]], window)
            if alpha is not None:
                found.append((index, alpha))
        return found

    def _coverage(self, polygons: list[np.ndarray], window: _Window) -> np.ndarray | None:
        """Anti-aliased union of the polygons over the window, or None if it misses them all."""
        image = Image.new("L", (window.width, window.height), 0)
        draw = ImageDraw.Draw(image)
        for polygon in polygons:
            draw.polygon((polygon - [window.x, window.y]).ravel().tolist(), fill=255)
        extrema = image.getextrema()
        if extrema == (0, 0):
            return None
        if extrema == (255, 255):
            return np.ones((window.height, window.width), np.float32)
        image = image.filter(ImageFilter.GaussianBlur(self.blur_edge))
        return np.asarray(image, dtype=np.float32) / 255.0

    def _tissue(self, window: _Window) -> np.ndarray | None:
        x1, y1 = window.x + window.width, window.y + window.height
        hits = [
            polygon
            for polygon, (bx0, by0, bx1, by1) in zip(
                self.polygons["tissue"], self.bboxes["tissue"], strict=True
            )
            if bx1 >= window.x and bx0 <= x1 and by1 >= window.y and by0 <= y1
        ]
        return self._coverage(hits, window) if hits else None

    def _nuclei(self, kind: str, window: _Window) -> np.ndarray:
        """Haematoxylin of the nuclei of `kind` in the window, from its hashed hexagonal lattice."""
        style = self.styles[kind]
        radius = style.radius_um / self.mpp
        spacing = style.spacing_um() / self.mpp
        row_height = spacing * 0.8660254
        reach = (
            radius
            * math.exp(2.5 * style.radius_cv)
            * math.sqrt(style.elongation)
            * (1 + style.irregularity)
            + style.jitter * spacing
        )
        ox, oy = self.lattice_offset[kind]
        j = np.arange(
            math.floor((window.y - reach - oy) / row_height),
            math.ceil((window.y + window.height + reach - oy) / row_height) + 1,
        )
        i = np.arange(
            math.floor((window.x - reach - ox) / spacing) - 1,
            math.ceil((window.x + window.width + reach - ox) / spacing) + 1,
        )
        jj, ii = (a.ravel() for a in np.meshgrid(j, i, indexing="ij"))
        vertices = 12
        u = site_uniforms(self.keys[kind], ii, jj, 8 + vertices)
        cx = (
            ox
            + (ii + 0.5 * (jj & 1)) * spacing
            + (u[:, 0] - 0.5) * style.jitter * spacing
            - window.x
        )
        cy = oy + jj * row_height + (u[:, 1] - 0.5) * style.jitter * spacing - window.y
        normal = np.sqrt(-2 * np.log(np.maximum(u[:, 3], 1e-12))) * np.cos(2 * np.pi * u[:, 4])
        r = radius * np.exp(style.radius_cv * np.clip(normal, -2.5, 2.5))
        stretch = np.sqrt(1 + (style.elongation - 1) * u[:, 5])
        if kind == "stroma":  # spindle cells lie along the fibres
            angle = self.stroma_angle + (u[:, 6] - 0.5) * 0.5
        else:
            angle = u[:, 6] * np.pi
        h = style.h_mean + (u[:, 7] - 0.5) * style.h_spread
        outline = 1 + style.irregularity * (2 * u[:, 8:] - 1)
        outline = (np.roll(outline, 1, axis=1) + 2 * outline + np.roll(outline, -1, axis=1)) / 4
        keep = (
            (u[:, 2] < style.keep)
            & (cx > -reach)
            & (cy > -reach)
            & (cx < window.width + reach)
            & (cy < window.height + reach)
        )
        theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)[None, :]
        along = (r * stretch)[:, None] * np.cos(theta) * outline
        across = (r / stretch)[:, None] * np.sin(theta) * outline
        cos_a, sin_a = np.cos(angle)[:, None], np.sin(angle)[:, None]
        xs = cx[:, None] + along * cos_a - across * sin_a
        ys = cy[:, None] + along * sin_a + across * cos_a
        points = np.stack([xs, ys], axis=2)[keep].reshape(-1, 2 * vertices)
        values = np.clip(np.rint(h[keep] * 100), 0, 255).astype(int)
        image = Image.new("L", (window.width, window.height), 0)
        draw = ImageDraw.Draw(image)
        for outline_points, value in zip(points.tolist(), values.tolist(), strict=True):
            draw.polygon(outline_points, fill=value)
        image = image.filter(ImageFilter.GaussianBlur(self.blur_nucleus))
        nuclei = np.asarray(image, dtype=np.float32) / 100.0
        grain = self._bank(self.grain, window, shift=_GRAIN_SHIFT[kind])
        return nuclei * (1 - style.chromatin / 2 + style.chromatin * grain)

    def _bank(self, bank: np.ndarray, window: _Window, shift: int = 0) -> np.ndarray:
        return crop(
            bank,
            window.x + int(self.bank_offset[0]) + shift,
            window.y + int(self.bank_offset[1]) + 3 * shift,
            window.width,
            window.height,
        )

    def _cells(self, kind: str, window: _Window) -> tuple[np.ndarray, np.ndarray]:
        """(haematoxylin, eosin) of a cellular region (tumor or mimic): cytoplasm plus nuclei."""
        style = self.styles[kind]
        nuclei = self._nuclei(kind, window)
        mottle = 0.85 + 0.3 * self._bank(self.grain, window, shift=211)
        h = style.h_cytoplasm * mottle + nuclei
        e = style.e_cytoplasm * mottle * (1 - 0.6 * np.clip(nuclei, 0, 1))
        return h, e

    def _stroma(self, window: _Window) -> tuple[np.ndarray, np.ndarray]:
        nuclei = self._nuclei("stroma", window)
        fibres = self._bank(self.fibres, window)
        h = STROMA_STYLE.h_cytoplasm + nuclei
        e = (0.2 + 0.45 * fibres) * (1 - 0.6 * np.clip(nuclei, 0, 1))
        return h, e

    def _to_rgb(
        self, h: np.ndarray, e: np.ndarray, extra_od: np.ndarray | None, x: int, y: int
    ) -> np.ndarray:
        """Beer-Lambert: stain amounts at level-0 pixels from (x, y) -> RGB uint8."""
        height, width = h.shape
        phase_x, phase_y, frequency = self.wave
        wave_y = np.sin(frequency * np.arange(y, y + height, dtype=np.float32) + phase_y)[:, None]
        wave_x = np.sin(frequency * np.arange(x, x + width, dtype=np.float32) + phase_x)[None, :]
        wave = 1 + 0.02 * wave_y * wave_x
        h = h * wave
        h *= self.h_scale
        e = e * wave
        e *= self.e_scale
        noise = 1.5 * crop(
            self.noise, x + int(self.bank_offset[0]), y + int(self.bank_offset[1]), width, height
        )
        rgb = np.empty((height, width, 3), np.uint8)
        for channel in range(3):
            od = h * HAEMATOXYLIN[channel]
            od += e * EOSIN[channel]
            if extra_od is not None:
                od += extra_od[..., channel]
            np.exp(-od, out=od)
            od *= ILLUMINATION[channel]
            od += noise
            rgb[..., channel] = np.clip(np.rint(od), 0, 255)
        return rgb

    def _mean_rgb(self, kind: str, window: _Window, inside: np.ndarray | None = None) -> np.ndarray:
        h, e = self._cells(kind, window)
        od = (h * self.h_scale)[..., None] * HAEMATOXYLIN + (e * self.e_scale)[..., None] * EOSIN
        rgb = ILLUMINATION * np.exp(-od)
        return rgb.reshape(-1, 3).mean(axis=0) if inside is None else rgb[inside].mean(axis=0)

    def _calibrate_regions(self) -> dict[str, list[np.ndarray]]:
        """Extra OD per channel for each tumor and mimic region that gives it exactly the mean
        colour of tumor tissue at large: then no region's mean colour tells what it is, only its
        texture does (big tumor nuclei make a small region's mean vary by several levels)."""
        target = self._mean_rgb("tumor", _Window(0, 0, 1024, 1024))
        offsets: dict[str, list[np.ndarray]] = {}
        for kind in ("tumor", "mimic"):
            offsets[kind] = []
            for polygon in self.polygons[kind]:
                sums, count = np.zeros(3), 0
                for window in _sample_windows(polygon, 1024, 16):
                    inside = self._coverage([polygon], window)
                    if inside is None or not (inside > 0.99).any():
                        continue
                    weight = int((inside > 0.99).sum())
                    sums += self._mean_rgb(kind, window, inside > 0.99) * weight
                    count += weight
                mean = sums / max(count, 1) if count else target
                offsets[kind].append(np.log(mean / target).astype(np.float32))
        return offsets

    # -- the public entry ------------------------------------------------------------------------

    def render(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, bool]:
        """RGB uint8 of level-0 pixels [x, x+width) x [y, y+height); True if it is all background."""
        m = self.margin
        window = _Window(x - m, y - m, width + 2 * m, height + 2 * m)
        inner = (slice(m, m + height), slice(m, m + width))
        tissue = self._tissue(window)
        if tissue is None:
            zero = np.zeros((height, width), np.float32)
            return self._to_rgb(zero, zero, None, x, y), True
        regions = {kind: self._alphas(kind, window) for kind in ("tumor", "mimic")}
        stroma = tissue
        for found in regions.values():
            for _, alpha in found:
                stroma = np.clip(stroma - alpha, 0, 1)
        h = np.zeros((height, width), np.float32)
        e = np.zeros((height, width), np.float32)
        extra = None
        if stroma.max() > 0:
            hs, es = self._stroma(window)
            h += stroma[inner] * hs[inner]
            e += stroma[inner] * es[inner]
        for kind, found in regions.items():
            if not found:
                continue
            hc, ec = self._cells(kind, window)
            for index, alpha in found:
                h += alpha[inner] * hc[inner]
                e += alpha[inner] * ec[inner]
                od = alpha[inner][..., None] * self.region_od[kind][index]
                extra = od if extra is None else extra + od
        return self._to_rgb(h, e, extra, x, y), False


def _sample_windows(polygon: np.ndarray, side: int, most: int) -> list[_Window]:
    """Windows covering the polygon's bounding box, or an even grid of `most` of them if more."""
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int)
    xs = list(range(x0, x1, side))
    ys = list(range(y0, y1, side))
    windows = [_Window(x, y, min(side, x1 - x), min(side, y1 - y)) for y in ys for x in xs]
    if len(windows) <= most:
        return windows
    pick = np.linspace(0, len(windows) - 1, most).round().astype(int)
    return [windows[i] for i in pick]
