"""A JPEG-tiled TIFF level read tile by tile: the compressed bytes, which tiles a batch needs, and
the patches cut from the decoded tiles, with no device or decoder assumed.

Why: openslide decodes a whole region per patch; reading each JPEG tile's compressed bytes
directly (tifffile's offsets, then pread) lets one decoded tile serve every patch on it, on the
CPU (hnm.io.patches.JpegTileReader, libjpeg-turbo) or the GPU (hnm.extract.gpu_decode, nvjpeg).
The level's shared JPEGTables are spliced into each tile, so every tile is a complete JPEG.

Colour: TIFF says how tiles are coded (Photometric RGB or YCbCr) but the JPEG streams themselves
often do not (Aperio writes RGB-coded JPEG with component ids 0,1,2 and no marker, which decoders
would take for YCbCr). We insert an Adobe APP14 marker (transform 0 = RGB, 1 = YCbCr) so that every
CPU decoder reads the colours the TIFF declares.

Geometry follows openslide's read_region: level coordinates are level-0 coordinates / downsample;
a fractional position is blended bilinearly (as openslide does) and area outside the level is white
(openslide's transparent, composited on white). Checked on the CPU against openslide.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

COMPRESSION_JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
SOI, EOI, SOS, APP0, APP14 = 0xD8, 0xD9, 0xDA, 0xE0, 0xEE


class NotJpegTiled(Exception):
    """The level cannot be read as JPEG tiles (openslide must); the message says why (it goes to
    the log)."""


def adobe_marker(transform: int) -> bytes:
    """APP14 'Adobe' segment: version 100, no flags, colour transform 0 (RGB) or 1 (YCbCr)."""
    return bytes([0xFF, APP14, 0x00, 0x0E]) + b"Adobe" + bytes([0x00, 0x64, 0, 0, 0, 0, transform])


def _segments(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of the header segments up to the start of scan."""
    i = 2 if stream[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(stream):
        if stream[i] != 0xFF:
            return
        marker = stream[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (SOI, EOI):
            i += 2
            continue
        length = int.from_bytes(stream[i + 2 : i + 4], "big")
        yield marker, stream[i + 4 : i + 2 + length]
        if marker == SOS:
            return
        i += 2 + length


def declares_colour(stream: bytes) -> bool:
    """True when a JFIF or Adobe marker already tells decoders the colour space."""
    for marker, payload in _segments(stream):
        if (marker == APP0 and payload.startswith(b"JFIF")) or (
            marker == APP14 and payload.startswith(b"Adobe")
        ):
            return True
    return False


@dataclass
class JpegTiledLevel:
    """A JPEG-tiled TIFF page: its geometry and where each compressed tile lies in the file."""

    path: str
    page_index: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    tiles_across: int
    tiles_down: int
    offsets: np.ndarray
    counts: np.ndarray
    photometric: int
    header: bytes  # SOI + (APP14) + shared tables: prepended to each tile's bytes after its SOI
    sampling: list[tuple[int, int]]  # each component's sampling factors, from the first tile

    @classmethod
    def inspect(cls, path: str | os.PathLike[str], size: tuple[int, int]) -> "JpegTiledLevel":
        """The tiled page of `path` whose size is `size` (openslide's level dimensions)."""
        import tifffile

        path = os.fspath(path)
        try:
            tif = tifffile.TiffFile(path)
        except Exception as error:  # not a TIFF at all (MRXS, DICOM, ...): the CPU path reads it
            raise NotJpegTiled(f"not a TIFF tifffile can parse ({type(error).__name__})") from error
        with tif:
            candidates = [
                (i, p)
                for i, p in enumerate(tif.pages)
                if (p.imagewidth, p.imagelength) == tuple(size) and p.is_tiled
            ]
            if not candidates:
                raise NotJpegTiled(f"no tiled TIFF page of size {size[0]}x{size[1]}")
            index, page = candidates[0]
            problems = []
            if page.compression != COMPRESSION_JPEG:
                problems.append(f"compression {int(page.compression)} is not JPEG (7)")
            if page.photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR):
                problems.append(f"photometric {int(page.photometric)} is neither RGB nor YCbCr")
            if page.samplesperpixel != 3 or page.bitspersample != 8:
                problems.append(f"{page.samplesperpixel} samples of {page.bitspersample} bits")
            if page.planarconfig != 1 or page.tiledepth != 1:
                problems.append("not chunky 2-D tiles")
            if problems:
                raise NotJpegTiled("; ".join(problems))
            tables = page.jpegtables or b""
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            photometric = int(page.photometric)
            tw, th = int(page.tilewidth), int(page.tilelength)
        if tables and not (tables.startswith(b"\xff\xd8") and tables.endswith(b"\xff\xd9")):
            raise NotJpegTiled("JPEGTables is not an abbreviated JPEG stream")
        level = cls(
            path=path,
            page_index=index,
            width=int(size[0]),
            height=int(size[1]),
            tile_width=tw,
            tile_height=th,
            tiles_across=math.ceil(size[0] / tw),
            tiles_down=math.ceil(size[1] / th),
            offsets=offsets,
            counts=counts,
            photometric=photometric,
            header=b"",
            sampling=[],
        )
        if len(offsets) < level.tiles_across * level.tiles_down:
            raise NotJpegTiled(
                f"{len(offsets)} tile offsets for a {level.tiles_across}x{level.tiles_down} grid"
            )
        first = level._first_tile_head()
        level.header = level._make_header(tables, first)
        level.sampling = component_sampling(first)
        return level

    def _first_tile_head(self) -> bytes:
        """The start of the first stored tile (its own markers, up to the scan), or b""."""
        sample = next((i for i, c in enumerate(self.counts) if c > 0), None)
        if sample is None:
            return b""
        with open(self.path, "rb") as handle:
            handle.seek(int(self.offsets[sample]))
            return handle.read(int(min(self.counts[sample], 4096)))

    def _make_header(self, tables: bytes, first: bytes) -> bytes:
        body = tables[2:-2] if tables else b""
        if declares_colour(b"\xff\xd8" + body + first[2:]):
            return b"\xff\xd8" + body
        transform = 0 if self.photometric == PHOTOMETRIC_RGB else 1
        return b"\xff\xd8" + adobe_marker(transform) + body

    def splice(self, raw: bytes) -> bytes:
        """A tile's own bytes (SOI ... EOI) -> a complete, self-describing JPEG."""
        return self.header + raw[2:]


class TileBytes:
    """Reads compressed tiles with pread (thread-safe, no decode) from one open file descriptor."""

    def __init__(self, level: JpegTiledLevel) -> None:
        self.level = level
        self._fd = os.open(level.path, os.O_RDONLY)

    def read(self, index: int) -> bytes | None:
        count = int(self.level.counts[index])
        if count == 0:  # a sparse (never written) tile: openslide shows it transparent -> white
            return None
        raw = os.pread(self._fd, count, int(self.level.offsets[index]))
        return self.level.splice(raw)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


@dataclass
class TilePlan:
    """Which tiles a batch of patches needs and where each patch sits in its tile mosaic."""

    tiles: np.ndarray  # (U,) tile indices to decode
    lookup: np.ndarray  # (B, ny, nx) index into `tiles`; U = white (outside the level or empty)
    origin: np.ndarray  # (B, 2) level x, y of each patch's top-left (integer part)
    offset: np.ndarray  # (B, 2) x, y of that point inside the mosaic of tiles
    frac: np.ndarray  # (B, 2) sub-pixel x, y (openslide blends bilinearly)
    span: int  # pixels cut per side: read_size, or read_size + 1 when blending


def level_positions(coords: np.ndarray, downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 `coords` -> (whole level pixel x, y, (N, 2) int64; sub-pixel part, (N, 2) float).

    A sub-pixel part other than 0 means the patch falls between level pixels and is blended."""
    position = np.asarray(coords, dtype=np.float64).reshape(-1, 2) / downsample
    origin = np.floor(position + 1e-9).astype(np.int64)
    frac = np.clip(position - origin, 0.0, 1.0)
    frac[frac < 1e-6] = 0.0
    return origin, frac


def plan_batch(
    level: JpegTiledLevel, coords: np.ndarray, downsample: float, read_size: int
) -> TilePlan:
    """The tiles that patches at level-0 `coords` (read_size px at `level`) need, each once."""
    origin, frac = level_positions(coords, downsample)
    span = read_size + (1 if frac.any() else 0)
    tw, th = level.tile_width, level.tile_height
    first = np.stack([origin[:, 0] // tw, origin[:, 1] // th], axis=1)
    last = np.stack([(origin[:, 0] + span - 1) // tw, (origin[:, 1] + span - 1) // th], axis=1)
    nx = int((last[:, 0] - first[:, 0]).max()) + 1 if len(coords) else 1
    ny = int((last[:, 1] - first[:, 1]).max()) + 1 if len(coords) else 1
    tx = first[:, 0, None, None] + np.arange(nx)[None, None, :]
    ty = first[:, 1, None, None] + np.arange(ny)[None, :, None]
    tx, ty = np.broadcast_arrays(tx, ty)
    inside = (tx >= 0) & (ty >= 0) & (tx < level.tiles_across) & (ty < level.tiles_down)
    index = np.where(inside, ty * level.tiles_across + tx, -1)
    present = inside & (level.counts[np.clip(index, 0, None)] > 0)
    index = np.where(present, index, -1)
    tiles, inverse = np.unique(index, return_inverse=True)
    inverse = inverse.reshape(index.shape)
    if len(tiles) and tiles[0] == -1:  # -1 sorts first: move "white" to the end
        tiles = tiles[1:]
        lookup = np.where(inverse == 0, len(tiles), inverse - 1)
    else:
        lookup = inverse
    offset = origin - first * np.array([tw, th])
    return TilePlan(
        tiles=tiles,
        lookup=lookup.astype(np.int64),
        origin=origin,
        offset=offset,
        frac=frac,
        span=span,
    )


def assemble_numpy(
    decoded: list[np.ndarray], plan: TilePlan, level: JpegTiledLevel, read_size: int
) -> np.ndarray:
    """Patches cut from decoded tiles (hnm.extract.gpu_decode.assemble's CPU twin, before
    resizing): (B, read_size, read_size, 3) uint8.

    Copies each patch's part of each tile with numpy slicing (a few memcpy per patch), which is
    much cheaper on a CPU than a per-pixel gather; rounding of blended pixels follows openslide.
    """
    th, tw = level.tile_height, level.tile_width
    span = plan.span
    white = len(plan.tiles)
    out = np.full((len(plan.lookup), span, span, 3), 255, dtype=np.uint8)
    ny, nx = plan.lookup.shape[1:]
    for b in range(len(out)):
        ox, oy = (int(v) for v in plan.offset[b])
        for j in range(ny):
            y0, y1 = max(oy, j * th), min(oy + span, (j + 1) * th)
            if y0 >= y1:
                continue
            for i in range(nx):
                tile = plan.lookup[b, j, i]
                x0, x1 = max(ox, i * tw), min(ox + span, (i + 1) * tw)
                if tile == white or x0 >= x1:
                    continue
                pixels = decoded[tile]
                out[b, y0 - oy : y1 - oy, x0 - ox : x1 - ox] = pixels[
                    y0 - j * th : y1 - j * th, x0 - i * tw : x1 - i * tw
                ]
        gx, gy = (int(v) for v in plan.origin[b])
        if gx + span > level.width:
            out[b, :, max(0, level.width - gx) :] = 255
        if gy + span > level.height:
            out[b, max(0, level.height - gy) :, :] = 255
    if span == read_size:
        return out
    fx = plan.frac[:, 0].astype(np.float32)[:, None, None, None]
    fy = plan.frac[:, 1].astype(np.float32)[:, None, None, None]
    x = out.astype(np.float32)
    r = read_size
    top = x[:, :r, :r] * (1 - fx) + x[:, :r, 1 : r + 1] * fx
    bottom = x[:, 1 : r + 1, :r] * (1 - fx) + x[:, 1 : r + 1, 1 : r + 1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def decode_cpu(streams: list[bytes], level: JpegTiledLevel) -> list[np.ndarray]:
    """Tiles decoded with libjpeg-turbo (imagecodecs), padded/cropped to the tile size."""
    import imagecodecs

    out = []
    for stream in streams:
        rgb = imagecodecs.jpeg8_decode(stream)
        if rgb.shape[:2] != (level.tile_height, level.tile_width) or rgb.ndim != 3:
            full = np.full((level.tile_height, level.tile_width, 3), 255, dtype=np.uint8)
            rgb = rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)
            h, w = min(rgb.shape[0], level.tile_height), min(rgb.shape[1], level.tile_width)
            full[:h, :w] = rgb[:h, :w, :3]
            rgb = full
        out.append(rgb)
    return out


def component_sampling(stream: bytes) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factors of each component, from the frame header."""
    for marker, payload in _segments(stream):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            count = payload[5]
            return [(payload[7 + 3 * i] >> 4, payload[7 + 3 * i] & 15) for i in range(count)]
    return []
