"""Writing a pyramidal, JPEG-tiled BigTIFF from a tile renderer, in bounded memory.

Why streaming: a demo slide can be 100k px across, far more than fits in memory as RGB. Level 0 is
rendered one tile row at a time and handed to tifffile as it is encoded; the lower levels are built
by 2x2 averaging of those rows as they pass and spooled, JPEG-encoded, to an anonymous temporary
file until level 0 is complete (openslide takes the first directory as level 0, so it must be
written first). The file depends only on the renderer, not on the number of worker threads.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import IO

import imagecodecs
import numpy as np
import tifffile

log = logging.getLogger(__name__)

_MIN_LEVEL_SIDE = 1024  # add pyramid levels until the longer side drops below this

# (x, y, width, height) of level-0 pixels -> (RGB uint8, whether it is all background)
Renderer = Callable[[int, int, int, int], tuple[np.ndarray, bool]]


def tiff_rational(value: float) -> tuple[int, int]:
    """`value` (> 0) as a TIFF RATIONAL, (numerator, denominator), both uint32: the closest
    fraction whose denominator is at most (2**32 - 1) / value, so that the numerator fits too.

    Why not hand tifffile the float: tifffile 2025.2 (the conda envs' pin) writes a float as
    2**32 - 1 over a rounded denominator, which read a 0.2431 um/px slide back as 0.24310080.
    1e4 / 0.2431 px/cm is exactly 100000000 / 2431, which this finds; it is tifffile 2026's own
    conversion, so slides that tifffile 2026 wrote are written byte for byte as before.
    """
    limit = 2**32 - 1
    fraction = Fraction(value).limit_denominator(max(1, min(limit, int(limit / value))))
    return fraction.numerator, fraction.denominator


def level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """Level sizes, halving until the longer side is under 1024 px (ceil, so downsamples are <= 2^l)."""
    dims = [(width, height)]
    while max(dims[-1]) >= _MIN_LEVEL_SIDE:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


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
        fill: np.ndarray,
    ) -> None:
        """`fill`: the RGB that pads tile rows past the image's right and bottom edges."""
        self.dims = dims
        self.tile = tile
        self.encode = encode
        self.pool = pool
        self.spool = spool
        self.pending: list[np.ndarray | None] = [None] * len(dims)
        self.emitted = [0] * len(dims)
        self.index: list[list[tuple[int, int]]] = [[] for _ in dims]
        self.fill = fill

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
        """The encoded tiles of `level` in file order, read back from the spool."""
        for offset, length in self.index[level]:
            self.spool.seek(offset)
            yield self.spool.read(length)


def write_pyramid(
    target: Path,
    render: Renderer,
    width: int,
    height: int,
    mpp: float,
    tile: int,
    quality: int,
    workers: int,
    fill: np.ndarray,
    background_period: int,
) -> None:
    """Render and write every level of a `width` x `height` slide at `mpp` to `target`.

    `fill` (uint8 RGB) pads tiles past the image's edges. Background tiles repeat with
    `background_period` px, so each distinct one is JPEG-encoded once and its bytes reused.
    """
    dims = level_dimensions(width, height)
    across, down = -(-width // tile), -(-height // tile)
    background_cache: dict[tuple[int, int], bytes] = {}

    def encode(pixels: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(
            pixels, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )

    def render_tile(index: int) -> tuple[np.ndarray, bytes]:
        x, y = (index % across) * tile, (index // across) * tile
        pixels, is_background = render(x, y, tile, tile)
        if not is_background:
            return pixels, encode(pixels)
        key = (x % background_period, y % background_period)
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
        pixels_per_cm = (
            tiff_rational(1e4 / (mpp * width / w)),
            tiff_rational(1e4 / (mpp * height / h)),
        )
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
        lower = _LowerLevels(dims, tile, encode, pool, spool, fill)
        writer.write(level0(pool, lower), **options(0))
        lower.finish()
        for level in range(1, len(dims)):
            writer.write(lower.encoded(level), **options(level))
