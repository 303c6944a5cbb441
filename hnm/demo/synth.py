"""Synthetic pyramidal whole-slide images with known tumor, so the pipeline can be run and checked
without downloading a cohort.

A slide holds a few irregular tissue blobs (eosin stroma with fibres and sparse spindle nuclei); a
positive slide adds tumor regions, and every slide adds "mimics": benign regions with the same mean
colour and nuclear area as tumor, so a mean-colour or coarse feature cannot tell them apart, but a
different fine texture (small, round, uniform, regularly spaced nuclei like a lymphoid aggregate,
against tumor's large, pleomorphic, hyperchromatic, crowded ones). Mimics are what make hard
negatives hard; `difficulty` moves their texture towards tumor's (1 = same distribution).

Layout (polygons) is decided once at low resolution; pixels are rendered tile by tile from
functions of level-0 coordinates only (hashed nucleus lattices, periodic texture banks), so tiles
join seamlessly, the file is byte-identical for the same arguments, and memory stays bounded: the
lower pyramid levels are built by 2x2 averaging of one tile row at a time and spooled, JPEG-encoded,
to an anonymous temporary file until level 0 is complete (openslide takes the first directory as
level 0, so it must be written first).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFilter
import scipy.fft
from scipy import ndimage

from hnm.core.atomic import atomic_path, write_json
from hnm.core.errors import ConfigError

log = logging.getLogger("hnm.demo.synth")

# Optical density of unit haematoxylin / eosin (R, G, B); H after Ruifrok & Johnston, E tuned
# towards the pink of scanned eosin. Stains mix in OD space (Beer-Lambert), so blends look right.
_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
_EOSIN = np.array([0.10, 0.85, 0.42], np.float32)
_ILLUMINATION = np.array([244.0, 243.0, 246.0], np.float32)  # bright field through bare glass
_BANK = 1024  # side of the periodic texture banks, px
_BANK_PAD = 288  # wrapped border: windows up to this size (a 256 px tile + margins) are slices
_MIN_LEVEL_SIDE = 1024  # add pyramid levels until the longer side drops below this
_GRAIN_SHIFT = {"tumor": 11, "mimic": 53, "stroma": 97}  # decorrelates the layers' chromatin


@dataclass
class SynthResult:
    """The written slide and its ground truth; polygons are (K, 2) level-0 x, y, unclosed."""

    path: str
    width: int
    height: int
    mpp: float
    label: int
    tumor_polygons: list[np.ndarray]
    mimic_polygons: list[np.ndarray]
    tissue_polygons: list[np.ndarray]


@dataclass(frozen=True)
class NucleusStyle:
    """How the nuclei of one region type look; sizes are physical so any mpp gives the same tissue."""

    radius_um: float  # median nuclear radius
    radius_cv: float  # log-normal spread of radii (pleomorphism)
    irregularity: float  # radial outline noise
    elongation: float  # largest axis ratio
    jitter: float  # displacement from the hexagonal lattice, in lattice spacings (0 = regular)
    fill: float  # nuclear area fraction; sets the lattice spacing
    keep: float  # chance that a lattice site holds a nucleus
    h_mean: float  # haematoxylin of a nucleus (hyperchromasia)
    h_spread: float  # uniform spread of it between nuclei
    chromatin: float  # amplitude of the texture inside a nucleus
    h_cytoplasm: float
    e_cytoplasm: float

    def spacing_um(self) -> float:
        # a hexagonal lattice cell (sqrt(3)/2 * spacing^2) holds keep * E[pi r^2] of nucleus, and
        # E[r^2] = median^2 * exp(2 cv^2) for log-normal radii
        mean_area = math.pi * self.radius_um**2 * math.exp(2 * self.radius_cv**2)
        return math.sqrt(self.keep * mean_area / (0.8660254 * self.fill))


TUMOR_STYLE = NucleusStyle(
    radius_um=6.0,
    radius_cv=0.32,
    irregularity=0.28,
    elongation=1.7,
    jitter=0.75,
    fill=0.40,
    keep=1.0,
    h_mean=1.65,
    h_spread=0.7,
    chromatin=0.55,
    h_cytoplasm=0.16,
    e_cytoplasm=0.36,
)
# A lymphoid aggregate: small, round, uniform, evenly spaced nuclei; same nuclear area fraction.
MIMIC_STYLE = NucleusStyle(
    radius_um=2.9,
    radius_cv=0.06,
    irregularity=0.03,
    elongation=1.08,
    jitter=0.3,
    fill=0.40,
    keep=1.0,
    h_mean=1.45,
    h_spread=0.08,
    chromatin=0.12,
    h_cytoplasm=0.16,
    e_cytoplasm=0.36,
)
_STROMA_STYLE = NucleusStyle(
    radius_um=2.6,
    radius_cv=0.18,
    irregularity=0.08,
    elongation=3.5,
    jitter=1.0,
    fill=0.02,
    keep=0.6,
    h_mean=1.2,
    h_spread=0.25,
    chromatin=0.15,
    h_cytoplasm=0.03,
    e_cytoplasm=0.0,
)


def mimic_style(difficulty: float) -> NucleusStyle:
    """The mimic's nuclei moved a fraction `difficulty` of the way towards tumor's."""
    fields = {
        name: (1 - difficulty) * getattr(MIMIC_STYLE, name)
        + difficulty * getattr(TUMOR_STYLE, name)
        for name in MIMIC_STYLE.__dataclass_fields__
    }
    return NucleusStyle(**fields)


def level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """Level sizes, halving until the longer side is under 1024 px (ceil, so downsamples are <= 2^l)."""
    dims = [(width, height)]
    while max(dims[-1]) >= _MIN_LEVEL_SIDE:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


# ---------------------------------------------------------------- counter-based random numbers
# Nuclei are a pure function of (seed, stream, lattice site), so any tile can draw the nuclei that
# reach into it from its neighbours, in any order, on any thread.

_U64 = np.uint64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit hash of a 64-bit counter."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _site_uniforms(key: int, i: np.ndarray, j: np.ndarray, count: int) -> np.ndarray:
    """(len(i), count) uniforms in [0, 1) for lattice sites (i, j) of the stream `key`."""
    with np.errstate(over="ignore"):
        site = _mix(
            _U64(key & 0xFFFFFFFFFFFFFFFF)
            ^ (i.astype(np.int64).astype(_U64) * _U64(0x9E3779B97F4A7C15))
            ^ (j.astype(np.int64).astype(_U64) * _U64(0xC2B2AE3D27D4EB4F))
        )
        draws = _mix(
            site[:, None] + np.arange(1, count + 1, dtype=_U64)[None, :] * _U64(0x165667B19E3779F9)
        )
    return (draws >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ---------------------------------------------------------------- layout (level-0 polygons)


def _star_polygon(
    rng: np.random.Generator,
    centre: tuple[float, float],
    radius: float,
    vertices: int,
    harmonics: int,
    amplitude: float,
    roughness: float,
) -> np.ndarray:
    """An irregular, simple (star-shaped) outline: a circle bent by a few random low harmonics."""
    theta = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    r = np.ones(vertices)
    for k in range(2, harmonics + 2):
        r += (
            amplitude
            * rng.uniform(0.3, 1.0)
            / k**0.7
            * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    # outline roughness at no more than 256 control points, so more vertices only smooth it
    knots = min(vertices, 256)
    rough = rng.standard_normal(knots)
    rough = (np.roll(rough, 1) + 2 * rough + np.roll(rough, -1)) / 4
    rough = np.interp(
        theta, np.linspace(0, 2 * np.pi, knots, endpoint=False), rough, period=2 * np.pi
    )
    r = radius * np.clip(r + roughness * rough, 0.35, None)
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)


def _raster(polygons: list[np.ndarray], shape: tuple[int, int], scale: float) -> np.ndarray:
    image = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(image)
    for polygon in polygons:
        draw.polygon((polygon / scale).ravel().tolist(), fill=1)
    return np.asarray(image, dtype=bool)


@dataclass(frozen=True)
class _Layout:
    tissue: list[np.ndarray]
    tumor: list[np.ndarray]
    mimic: list[np.ndarray]


def _make_layout(
    rng: np.random.Generator,
    width: int,
    height: int,
    mpp: float,
    label: int,
    tumor_regions: int,
    mimic_regions: int,
    region_size_um: float,
) -> _Layout:
    n_blobs = int(rng.integers(2, 4))
    coverage = rng.uniform(0.35, 0.5)
    radius = math.sqrt(coverage * width * height / (n_blobs * math.pi))
    centres: list[tuple[float, float]] = []
    for _ in range(n_blobs):  # best of 20 candidates: blobs spread out but may touch
        candidates = rng.uniform(0.3, 0.7, size=(20, 2)) * [width, height] + rng.uniform(
            -0.3, 0.3, size=(20, 2)
        ) * [width, height]
        if centres:
            gaps = np.min(
                np.linalg.norm(candidates[:, None] - np.array(centres)[None], axis=2), axis=1
            )
            best = int(np.argmax(gaps))
        else:
            best = 0
        centres.append((float(candidates[best, 0]), float(candidates[best, 1])))
    tissue = []
    for centre in centres:
        size = radius * rng.uniform(0.8, 1.15)
        vertices = int(np.clip(2 * np.pi * size / 48, 256, 4096))  # edges of about 48 px or less
        blob = _star_polygon(rng, centre, size, vertices, 6, 0.35, 0.03)
        blob[:, 0] = np.clip(blob[:, 0], 1.0, width - 1.0)
        blob[:, 1] = np.clip(blob[:, 1], 1.0, height - 1.0)
        tissue.append(blob)

    scale = max(8.0, max(width, height) / 1024.0)  # level-0 px per layout-mask px
    shape = (math.ceil(height / scale), math.ceil(width / scale))
    free = _raster(tissue, shape, scale)
    free[[0, -1], :] = free[:, [0, -1]] = False  # regions stay inside the image too
    kinds = ["tumor"] * (tumor_regions if label == 1 else 0) + ["mimic"] * mimic_regions
    order = rng.permutation(len(kinds))
    placed: dict[str, list[np.ndarray]] = {"tumor": [], "mimic": []}
    base = region_size_um / 2.0 / mpp
    for index in order:
        kind = kinds[index]
        polygon = _star_polygon(rng, (0.0, 0.0), base * rng.uniform(0.75, 1.25), 96, 4, 0.22, 0.02)
        for _attempt in range(5):
            reach = float(np.max(np.hypot(polygon[:, 0], polygon[:, 1])))
            margin = max(2.5 * scale, 0.08 * reach)
            distance = ndimage.distance_transform_edt(free) * scale
            rows, cols = np.nonzero(distance >= reach + margin)
            if rows.size:
                pick = int(rng.integers(rows.size))
                centre = ((cols[pick] + 0.5) * scale, (rows[pick] + 0.5) * scale)
                region = polygon + np.array(centre)
                placed[kind].append(region)
                grown = (region - centre) * (1 + margin / reach) + centre
                free &= ~_raster([grown], shape, scale)
                break
            polygon = polygon * 0.8
        else:
            log.warning(
                "no room for a %s region of %.0f um in the tissue; placed fewer",
                kind,
                region_size_um,
            )
    if label == 1 and not placed["tumor"]:
        raise ConfigError(
            f"could not place any tumor region of {region_size_um} um in a {width}x{height} px slide "
            f"at {mpp} um/px; use a smaller --tumor-size-um or a larger slide"
        )
    return _Layout(tissue=tissue, tumor=placed["tumor"], mimic=placed["mimic"])


# ---------------------------------------------------------------- textures and rendering


def _periodic_field(
    rng: np.random.Generator, size: int, spectrum: Callable[..., np.ndarray]
) -> np.ndarray:
    """Filtered white noise that wraps around, normalised to unit variance."""
    f = np.fft.fftfreq(size).astype(np.float32)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    noise = rng.standard_normal((size, size), dtype=np.float32)
    field = scipy.fft.ifft2(scipy.fft.fft2(noise) * spectrum(fx, fy)).real
    return (field / field.std()).astype(np.float32)


def _fibre_bank(rng: np.random.Generator, angle: float, spacing_px: float) -> np.ndarray:
    """Wavy bundles of collagen fibres roughly along `angle`, with paler loose areas.

    Noise kept only at frequencies across the fibres gives straight streaks; a smooth periodic
    displacement field then bends them, and a coarse field thins them out in places."""

    def across(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        radius = np.hypot(fx, fy)
        cosine = (fx * math.cos(angle + np.pi / 2) + fy * math.sin(angle + np.pi / 2)) / np.maximum(
            radius, 1e-9
        )
        angular = np.exp(-(1 - cosine**2) / 0.05)
        radial = np.exp(-((radius - 1 / spacing_px) ** 2) / (2 * (0.5 / spacing_px) ** 2))
        return angular * radial

    def coarse(scale_px: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda fx, fy: np.exp(-((np.hypot(fx, fy) * scale_px) ** 2) / 2)

    streaks = _periodic_field(rng, _BANK, across)
    bend, smooth = 0.7 * spacing_px, 16.0 * spacing_px
    rows, cols = np.mgrid[0:_BANK, 0:_BANK].astype(np.float32)
    rows += bend * _periodic_field(rng, _BANK, coarse(smooth))
    cols += bend * _periodic_field(rng, _BANK, coarse(smooth))
    streaks = ndimage.map_coordinates(streaks, [rows, cols], order=1, mode="grid-wrap")
    fibres = 0.5 + 0.5 * np.tanh(1.3 * streaks)
    pale = 0.5 + 0.5 * np.tanh(_periodic_field(rng, _BANK, coarse(4 * spacing_px)))
    return (fibres * (0.5 + 0.5 * pale)).astype(np.float32)


def _grain_bank(rng: np.random.Generator, grain_px: float) -> np.ndarray:
    """Fine mottling in [0, 1] (chromatin, cytoplasm)."""
    field = _periodic_field(
        rng, _BANK, lambda fx, fy: np.exp(-((np.hypot(fx, fy) * grain_px * 2.5) ** 2))
    )
    return (0.5 + 0.5 * np.tanh(field)).astype(np.float32)


def _crop(bank: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """A window of a periodic bank; banks carry a wrapped border so a tile is a plain slice."""
    size = bank.shape[0] - _BANK_PAD
    x, y = x % size, y % size
    if width <= _BANK_PAD and height <= _BANK_PAD:
        return bank[y : y + height, x : x + width]
    return bank[np.ix_(np.arange(y, y + height) % size, np.arange(x, x + width) % size)]


def _padded(bank: np.ndarray) -> np.ndarray:
    return np.pad(bank, ((0, _BANK_PAD), (0, _BANK_PAD)), mode="wrap")


@dataclass(frozen=True)
class _Window:
    """A rectangle of level-0 pixels being rendered (the tile plus a margin for blurs)."""

    x: int
    y: int
    width: int
    height: int


class _Scene:
    """Everything needed to render any level-0 rectangle of one slide."""

    def __init__(
        self, layout: _Layout, rng: np.random.Generator, mpp: float, difficulty: float
    ) -> None:
        self.mpp = mpp
        fibre_angle = float(rng.uniform(0, np.pi))
        self.fibres = _padded(_fibre_bank(rng, fibre_angle, spacing_px=5.0 / mpp))
        self.grain = _padded(_grain_bank(rng, grain_px=0.6 / mpp))
        self.noise = _padded(rng.standard_normal((_BANK, _BANK)).astype(np.float32))
        self.bank_offset = rng.integers(0, _BANK, size=2)
        stain = rng.uniform(0.92, 1.08, size=2)  # this slide's staining batch
        self.h_scale, self.e_scale = float(stain[0]), float(stain[1])
        wave = rng.uniform(0, 2 * np.pi, size=2)
        self.wave = (float(wave[0]), float(wave[1]), 2 * np.pi * mpp / 1500.0)
        self.styles = {
            "tumor": TUMOR_STYLE,
            "mimic": mimic_style(difficulty),
            "stroma": _STROMA_STYLE,
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
        u = _site_uniforms(self.keys[kind], ii, jj, 8 + vertices)
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
        return _crop(
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
        h = _STROMA_STYLE.h_cytoplasm + nuclei
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
        noise = 1.5 * _crop(
            self.noise, x + int(self.bank_offset[0]), y + int(self.bank_offset[1]), width, height
        )
        rgb = np.empty((height, width, 3), np.uint8)
        for channel in range(3):
            od = h * _HAEMATOXYLIN[channel]
            od += e * _EOSIN[channel]
            if extra_od is not None:
                od += extra_od[..., channel]
            np.exp(-od, out=od)
            od *= _ILLUMINATION[channel]
            od += noise
            rgb[..., channel] = np.clip(np.rint(od), 0, 255)
        return rgb

    def _mean_rgb(self, kind: str, window: _Window, inside: np.ndarray | None = None) -> np.ndarray:
        h, e = self._cells(kind, window)
        od = (h * self.h_scale)[..., None] * _HAEMATOXYLIN + (e * self.e_scale)[..., None] * _EOSIN
        rgb = _ILLUMINATION * np.exp(-od)
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

    # -- public to this module -------------------------------------------------------------------

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


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- streaming pyramid writer


def _downsample(rows: np.ndarray) -> np.ndarray:
    """2x2 box average of an (even H, even W, 3) uint8 block, rounded; in column chunks, so a
    50k px wide row needs no full-width 16-bit copies."""
    out = np.empty((rows.shape[0] // 2, rows.shape[1] // 2, 3), np.uint8)
    for start in range(0, rows.shape[1], 4096):
        wide = rows[:, start : start + 4096].astype(np.uint16)
        total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
        out[:, start // 2 : start // 2 + total.shape[1]] = (total + 2) >> 2
    return out


class _LowerLevels:
    """Builds levels 1.. from level-0 tile rows as they stream past; keeps one tile row per level
    in memory and spools the encoded tiles to a temporary file."""

    def __init__(
        self,
        dims: list[tuple[int, int]],
        tile: int,
        encode: Callable[[np.ndarray], bytes],
        pool: Executor,
        spool: IO[bytes],
    ) -> None:
        self.dims = dims
        self.tile = tile
        self.encode = encode
        self.pool = pool
        self.spool = spool
        self.pending: list[np.ndarray | None] = [None] * len(dims)
        self.emitted = [0] * len(dims)
        self.index: list[list[tuple[int, int]]] = [[] for _ in dims]
        self.fill = _to_uint8(_ILLUMINATION)

    def _tiles_across(self, level: int) -> int:
        return -(-self.dims[level][0] // self.tile)

    def _tiles_down(self, level: int) -> int:
        return -(-self.dims[level][1] // self.tile)

    def push(self, level: int, above: np.ndarray) -> None:
        """Take a full tile row of level-1 pixels; emit whole tile rows of `level` when ready."""
        if level >= len(self.dims):
            return
        rows = _downsample(above)
        width = self._tiles_across(level) * self.tile
        if rows.shape[1] >= width:
            rows = rows[:, :width]
        else:
            pad = np.empty((rows.shape[0], width - rows.shape[1], 3), np.uint8)
            pad[:] = self.fill
            rows = np.concatenate([rows, pad], axis=1)
        pending = self.pending[level]
        pending = rows if pending is None else np.concatenate([pending, rows], axis=0)
        while pending is not None and pending.shape[0] >= self.tile:
            self._emit(level, pending[: self.tile])
            pending = pending[self.tile :] if pending.shape[0] > self.tile else None
        self.pending[level] = pending

    def _emit(self, level: int, row: np.ndarray) -> None:
        if self.emitted[level] >= self._tiles_down(level):
            return  # rows rendered past the image's bottom edge
        tiles = [
            np.ascontiguousarray(row[:, x : x + self.tile])
            for x in range(0, row.shape[1], self.tile)
        ]
        for data in self.pool.map(self.encode, tiles):
            self.index[level].append((self.spool.tell(), len(data)))
            self.spool.write(data)
        self.emitted[level] += 1
        self.push(level + 1, row)

    def finish(self) -> None:
        """Pad and emit the last partial tile row of each level, finest first."""
        for level in range(1, len(self.dims)):
            while self.emitted[level] < self._tiles_down(level):
                pending = self.pending[level]
                have = 0 if pending is None else pending.shape[0]
                block = np.empty((self.tile, self._tiles_across(level) * self.tile, 3), np.uint8)
                block[:] = self.fill
                if pending is not None:
                    block[:have] = pending
                self.pending[level] = None
                self._emit(level, block)

    def encoded(self, level: int) -> Iterator[bytes]:
        for offset, length in self.index[level]:
            self.spool.seek(offset)
            yield self.spool.read(length)


def _write_pyramid(
    target: Path,
    scene: _Scene,
    width: int,
    height: int,
    mpp: float,
    tile: int,
    quality: int,
    workers: int,
) -> None:
    dims = level_dimensions(width, height)
    across, down = -(-width // tile), -(-height // tile)
    background_cache: dict[tuple[int, int], bytes] = {}

    def encode(pixels: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(
            pixels, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )

    def render_tile(index: int) -> tuple[np.ndarray, bytes]:
        x, y = (index % across) * tile, (index // across) * tile
        pixels, is_background = scene.render(x, y, tile, tile)
        if not is_background:
            return pixels, encode(pixels)
        key = (x % _BANK, y % _BANK)  # background repeats with the noise bank
        if key not in background_cache:
            background_cache[key] = encode(pixels)
        return pixels, background_cache[key]

    def level0(pool: Executor, lower: _LowerLevels) -> Iterator[bytes]:
        started = time.perf_counter()
        row = np.empty((tile, across * tile, 3), np.uint8)
        for row_index in range(down):
            encoded = []
            first = row_index * across
            for column, (pixels, data) in enumerate(
                pool.map(render_tile, range(first, first + across))
            ):
                row[:, column * tile : (column + 1) * tile] = pixels
                encoded.append(data)
            # Push before yielding: tifffile stops pulling after the last tile.
            lower.push(1, row)
            yield from encoded
            if (row_index + 1) % 16 == 0 or row_index + 1 == down:
                log.info(
                    "rendered %d/%d tile rows (%.0f s)",
                    row_index + 1,
                    down,
                    time.perf_counter() - started,
                )

    def options(level: int) -> dict:
        w, h = dims[level]
        pixels_per_cm = 1e4 / (mpp * width / w), 1e4 / (mpp * height / h)
        return dict(
            shape=(h, w, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            compression="jpeg",
            photometric="rgb",
            subsampling=(2, 2),
            resolution=pixels_per_cm,
            resolutionunit="CENTIMETER",
            subfiletype=0 if level == 0 else 1,
            metadata=None,
            software=False,
        )

    with (
        tempfile.TemporaryFile(dir=target.parent) as spool,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tifffile.TiffWriter(target, bigtiff=True) as writer,
    ):
        lower = _LowerLevels(dims, tile, encode, pool, spool)
        writer.write(level0(pool, lower), **options(0))
        lower.finish()
        for level in range(1, len(dims)):
            writer.write(lower.encoded(level), **options(level))


# ---------------------------------------------------------------- public API


def _check(
    width: int,
    height: int,
    mpp: float,
    label: int,
    tumor_regions: int,
    mimic_regions: int,
    tumor_size_um: float,
    difficulty: float,
    tile_size: int,
    jpeg_quality: int,
) -> None:
    problems = []
    if width < 64 or height < 64:
        problems.append(f"width and height must be at least 64 px (got {width}x{height})")
    if not 0.05 <= mpp <= 50:
        problems.append(f"mpp must be in [0.05, 50] um/px (got {mpp})")
    if label not in (0, 1):
        problems.append(f"label must be 0 or 1 (got {label})")
    if tumor_regions < 0 or mimic_regions < 0:
        problems.append("region counts must be >= 0")
    if label == 1 and tumor_regions < 1:
        problems.append("a positive slide (label 1) needs tumor_regions >= 1")
    if not tumor_size_um > 0:
        problems.append(f"tumor_size_um must be > 0 (got {tumor_size_um})")
    if not 0 <= difficulty <= 1:
        problems.append(f"difficulty must be in [0, 1] (got {difficulty})")
    if tile_size < 16 or tile_size % 16:
        problems.append(f"tile_size must be a positive multiple of 16 (got {tile_size})")
    if not 1 <= jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be in [1, 100] (got {jpeg_quality})")
    if problems:
        raise ConfigError("synthetic slide settings: " + "; ".join(problems))


def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    mpp: float = 0.5,
    label: int,
    seed: int,
    tumor_regions: int = 3,
    mimic_regions: int = 3,
    tumor_size_um: float = 300.0,
    difficulty: float = 0.5,
    tile_size: int = 256,
    jpeg_quality: int = 90,
    workers: int = 1,
) -> SynthResult:
    """Write one synthetic slide (atomically) and return its ground truth.

    `tumor_size_um` is the typical diameter of a tumor region, and of a mimic (they must match at a
    coarse look). `workers` threads render and encode tiles; the file does not depend on it.
    """
    _check(
        width,
        height,
        mpp,
        label,
        tumor_regions,
        mimic_regions,
        tumor_size_um,
        difficulty,
        tile_size,
        jpeg_quality,
    )
    rng = np.random.default_rng(seed)
    layout = _make_layout(
        rng, width, height, mpp, label, tumor_regions, mimic_regions, tumor_size_um
    )
    scene = _Scene(layout, rng, mpp, difficulty)
    with atomic_path(path) as temporary:
        _write_pyramid(temporary, scene, width, height, mpp, tile_size, jpeg_quality, workers)
    return SynthResult(
        path=os.fspath(path),
        width=width,
        height=height,
        mpp=mpp,
        label=label,
        tumor_polygons=[p.copy() for p in layout.tumor],
        mimic_polygons=[p.copy() for p in layout.mimic],
        tissue_polygons=[p.copy() for p in layout.tissue],
    )


_CLASS_COLOURS = {"Tumor": [200, 0, 0], "Mimic": [0, 120, 200], "Tissue": [20, 160, 20]}


def _feature(polygon: np.ndarray, name: str) -> dict:
    ring = np.round(np.asarray(polygon, dtype=np.float64), 2).tolist()
    ring.append(ring[0])  # GeoJSON rings are closed
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": _CLASS_COLOURS[name]},
        },
    }


def write_annotation(path: str | os.PathLike[str], result: SynthResult) -> None:
    """The ground truth as a QuPath-style GeoJSON FeatureCollection in level-0 pixel coordinates."""
    features = [_feature(p, "Tissue") for p in result.tissue_polygons]
    features += [_feature(p, "Tumor") for p in result.tumor_polygons]
    features += [_feature(p, "Mimic") for p in result.mimic_polygons]
    write_json(path, {"type": "FeatureCollection", "features": features})
