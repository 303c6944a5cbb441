"""Random numbers and periodic texture banks that make synthetic tissue a function of position.

Why: a tile must be renderable alone, in any order, on any thread, and come out the same every time,
so nothing may depend on what was rendered before. Nuclei therefore draw their parameters from a
counter-based hash of (seed, stream, lattice site), and continuous textures (collagen fibres,
chromatin grain, sensor noise) are cut from banks that wrap around, so any window is a slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.fft
from scipy import ndimage

BANK = 1024  # side of the periodic texture banks, px
_BANK_PAD = 288  # wrapped border: windows up to this size (a 256 px tile + margins) are slices
_U64 = np.uint64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit hash of a 64-bit counter."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def site_uniforms(key: int, i: np.ndarray, j: np.ndarray, count: int) -> np.ndarray:
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


def _periodic_field(
    rng: np.random.Generator, size: int, spectrum: Callable[..., np.ndarray]
) -> np.ndarray:
    """Filtered white noise that wraps around, normalised to unit variance."""
    f = np.fft.fftfreq(size).astype(np.float32)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    noise = rng.standard_normal((size, size), dtype=np.float32)
    field = scipy.fft.ifft2(scipy.fft.fft2(noise) * spectrum(fx, fy)).real
    return (field / field.std()).astype(np.float32)


def fibre_bank(rng: np.random.Generator, angle: float, spacing_px: float) -> np.ndarray:
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

    streaks = _periodic_field(rng, BANK, across)
    bend, smooth = 0.7 * spacing_px, 16.0 * spacing_px
    rows, cols = np.mgrid[0:BANK, 0:BANK].astype(np.float32)
    rows += bend * _periodic_field(rng, BANK, coarse(smooth))
    cols += bend * _periodic_field(rng, BANK, coarse(smooth))
    streaks = ndimage.map_coordinates(streaks, [rows, cols], order=1, mode="grid-wrap")
    fibres = 0.5 + 0.5 * np.tanh(1.3 * streaks)
    pale = 0.5 + 0.5 * np.tanh(_periodic_field(rng, BANK, coarse(4 * spacing_px)))
    return (fibres * (0.5 + 0.5 * pale)).astype(np.float32)


def grain_bank(rng: np.random.Generator, grain_px: float) -> np.ndarray:
    """Fine mottling in [0, 1] (chromatin, cytoplasm)."""
    field = _periodic_field(
        rng, BANK, lambda fx, fy: np.exp(-((np.hypot(fx, fy) * grain_px * 2.5) ** 2))
    )
    return (0.5 + 0.5 * np.tanh(field)).astype(np.float32)


def crop(bank: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """A window of a periodic bank; banks carry a wrapped border so a tile is a plain slice."""
    size = bank.shape[0] - _BANK_PAD
    x, y = x % size, y % size
    if width <= _BANK_PAD and height <= _BANK_PAD:
        return bank[y : y + height, x : x + width]
    return bank[np.ix_(np.arange(y, y + height) % size, np.arange(x, x + width) % size)]


def padded(bank: np.ndarray) -> np.ndarray:
    return np.pad(bank, ((0, _BANK_PAD), (0, _BANK_PAD)), mode="wrap")
