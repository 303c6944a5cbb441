"""Patches straight from a slide's JPEG tiles, decoded on the GPU.

Why: on a GPU machine, decoding JPEG tiles on the CPU (openslide/pyvips) caps extraction at a few
thousand patches per second, far below the encoder (docs/performance.md). Where the pyramid level we read
is JPEG-tiled, we read each tile's compressed bytes (no decode) with tifffile's offsets, splice in
the level's shared JPEGTables so each tile is a complete JPEG, decode batches with nvjpeg through
torchvision.io.decode_jpeg(device='cuda'), and cut the patches out of the decoded tiles on the GPU.

Colour: TIFF says how tiles are coded (Photometric RGB or YCbCr) but the JPEG streams themselves
often do not (Aperio writes RGB-coded JPEG with component ids 0,1,2 and no marker, which decoders
would take for YCbCr). We insert an Adobe APP14 marker (transform 0 = RGB, 1 = YCbCr) so that every
CPU decoder reads the colours the TIFF declares. nvjpeg ignores that marker and converts every
3-component stream as YCbCr, so YCbCr-coded tiles go through torchvision's decode_jpeg and
RGB-coded 4:4:4 tiles through hnm.extract.nvjpeg_raw, which asks nvjpeg for the coded planes. Either decoder
is checked against Pillow on a few tiles of each slide before it is trusted (else the CPU path).

Geometry follows openslide's read_region: level coordinates are level-0 coordinates / downsample;
a fractional position is blended bilinearly (as openslide does), area outside the level is white
(openslide's transparent, composited on white), and read_size -> patch_size uses bilinear with
antialiasing (Pillow's BILINEAR on the CPU path).

The byte handling and patch assembly are device-agnostic and checked on the CPU against openslide.
"""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

COMPRESSION_JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
SOI, EOI, SOS, APP0, APP14 = 0xD8, 0xD9, 0xDA, 0xE0, 0xEE


class NotJpegTiled(Exception):
    """The level cannot take the GPU path; the message says why (it goes to the log)."""


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


def plan_batch(
    level: JpegTiledLevel, coords: np.ndarray, downsample: float, read_size: int
) -> TilePlan:
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    position = coords / downsample
    origin = np.floor(position + 1e-9).astype(np.int64)
    frac = np.clip(position - origin, 0.0, 1.0)
    frac[frac < 1e-6] = 0.0
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


def assemble(
    decoded: torch.Tensor,
    plan: TilePlan,
    level: JpegTiledLevel,
    read_size: int,
    patch_size: int,
) -> torch.Tensor:
    """Decoded tiles (U, 3, th, tw) uint8 -> patches (B, 3, patch_size, patch_size) float in 0..255."""
    device = decoded.device
    th, tw = level.tile_height, level.tile_width
    white = torch.full((1, 3, th, tw), 255, dtype=torch.uint8, device=device)
    table = torch.cat([decoded, white]) if len(decoded) else white
    lookup = torch.as_tensor(plan.lookup, device=device)
    offset = torch.as_tensor(plan.offset, device=device)
    origin = torch.as_tensor(plan.origin, device=device)
    steps = torch.arange(plan.span, device=device)
    my = offset[:, 1, None] + steps  # (B, S) row in the mosaic
    mx = offset[:, 0, None] + steps
    batch = torch.arange(len(lookup), device=device)[:, None, None]
    tile = lookup[batch, (my // th)[:, :, None], (mx // tw)[:, None, :]]  # (B, S, S)
    pixels = table[tile, :, (my % th)[:, :, None], (mx % tw)[:, None, :]]  # (B, S, S, 3)
    outside = ((origin[:, 1, None] + steps) >= level.height)[:, :, None] | (
        (origin[:, 0, None] + steps) >= level.width
    )[:, None, :]
    pixels = pixels.masked_fill(outside[..., None], 255)
    x = pixels.permute(0, 3, 1, 2).float()
    if plan.span > read_size:
        fx = torch.as_tensor(plan.frac[:, 0], device=device, dtype=x.dtype).view(-1, 1, 1, 1)
        fy = torch.as_tensor(plan.frac[:, 1], device=device, dtype=x.dtype).view(-1, 1, 1, 1)
        r = read_size
        top = x[:, :, :r, :r] * (1 - fx) + x[:, :, :r, 1 : r + 1] * fx
        bottom = x[:, :, 1 : r + 1, :r] * (1 - fx) + x[:, :, 1 : r + 1, 1 : r + 1] * fx
        x = top * (1 - fy) + bottom * fy
    if read_size != patch_size:
        x = F.interpolate(
            x, size=(patch_size, patch_size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0, 255)
    return x


def assemble_numpy(
    decoded: list[np.ndarray], plan: TilePlan, level: JpegTiledLevel, read_size: int
) -> np.ndarray:
    """CPU twin of `assemble` before resizing: (B, read_size, read_size, 3) uint8.

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


def decode_pillow(streams: list[bytes], level: JpegTiledLevel) -> torch.Tensor:
    """CPU reference decoder (libjpeg-turbo through Pillow): (U, 3, th, tw) uint8."""
    from PIL import Image

    if not streams:
        return no_tiles(level, torch.device("cpu"))
    tiles = []
    for stream in streams:
        with Image.open(io.BytesIO(stream)) as image:
            tiles.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
    return fit_tiles(tiles, level)


def nvjpeg_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return False, "torchvision is not installed (pip install torchvision)"
    return True, ""


def make_nvjpeg_decoder(
    device: torch.device,
) -> Callable[[list[bytes], JpegTiledLevel], torch.Tensor]:
    """nvjpeg through torchvision, for YCbCr-coded tiles (it treats every stream as YCbCr)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(streams: list[bytes], level: JpegTiledLevel) -> torch.Tensor:
        if not streams:
            return no_tiles(level, device)
        data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
        return fit_tiles(decode_jpeg(data, mode=ImageReadMode.RGB, device=device), level)

    return decode


def no_tiles(level: JpegTiledLevel, device: torch.device) -> torch.Tensor:
    """What a decoder returns for a batch whose tiles were all never written (sparse)."""
    shape = (0, 3, level.tile_height, level.tile_width)
    return torch.empty(shape, dtype=torch.uint8, device=device)


def fit_tiles(images: torch.Tensor | list[torch.Tensor], level: JpegTiledLevel) -> torch.Tensor:
    """Decoded tiles -> (U, 3, th, tw): as they are when all have the level's tile size, else each
    cropped or padded with white (a few writers store edge tiles cropped)."""
    th, tw = level.tile_height, level.tile_width
    if isinstance(images, torch.Tensor) and tuple(images.shape[1:]) == (3, th, tw):
        return images
    if all(tuple(im.shape) == (3, th, tw) for im in images):
        return torch.stack(list(images))
    out = torch.full((len(images), 3, th, tw), 255, dtype=torch.uint8, device=images[0].device)
    for i, im in enumerate(images):
        h, w = min(im.shape[1], th), min(im.shape[2], tw)
        out[i, : im.shape[0], :h, :w] = im[:3, :h, :w]
    return out


def component_sampling(stream: bytes) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factors of each component, from the frame header."""
    for marker, payload in _segments(stream):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            count = payload[5]
            return [(payload[7 + 3 * i] >> 4, payload[7 + 3 * i] & 15) for i in range(count)]
    return []


def raw_planes_are_rgb(level: JpegTiledLevel) -> tuple[bool, str]:
    """Whether decoding the coded planes without colour conversion gives the slide's RGB."""
    if level.photometric != PHOTOMETRIC_RGB:
        return False, "tiles are YCbCr-coded"
    if len(level.sampling) != 3 or len(set(level.sampling)) != 1:
        return False, f"RGB-coded tiles with component sampling {level.sampling}"
    return True, ""


def make_raw_nvjpeg_decoder(
    device: torch.device, backend: str = "hardware", output: str = "yuv"
) -> Callable[[list[bytes], JpegTiledLevel], torch.Tensor]:
    """nvjpeg's coded planes (no colour transform) through ctypes, for RGB-coded 4:4:4 tiles."""
    from hnm.extract.nvjpeg_raw import RawNvjpeg

    decoder = RawNvjpeg(device, backend=backend, output=output)

    def decode(streams: list[bytes], level: JpegTiledLevel) -> torch.Tensor:
        return fit_tiles(decoder.decode(streams), level) if streams else no_tiles(level, device)

    return decode


def check_decoder(
    decode: Callable[[list[bytes], JpegTiledLevel], torch.Tensor],
    level: JpegTiledLevel,
    samples: int = 16,
    tolerance: float = 3.0,
) -> tuple[bool, float]:
    """Compare a decoder with Pillow on a few tiles: (agrees, mean absolute difference in grey levels).

    Different IDCT/upsampling implementations differ by a level or two; a wrong colour space by tens.
    """
    reader = TileBytes(level)
    try:
        chosen = np.flatnonzero(level.counts[: level.tiles_across * level.tiles_down] > 0)
        chosen = (
            chosen[np.linspace(0, len(chosen) - 1, min(samples, len(chosen))).astype(int)]
            if len(chosen)
            else chosen
        )
        streams = [reader.read(int(i)) for i in chosen]
    finally:
        reader.close()
    streams = [s for s in streams if s is not None]
    if not streams:
        return True, 0.0
    reference = decode_pillow(streams, level).float()
    candidate = decode(streams, level).to("cpu").float()
    difference = float((reference - candidate).abs().mean())
    return difference <= tolerance, difference


class JpegPatchSource:
    """Batches of patches (float 0..255, (B, 3, P, P), on `device`) from a JPEG-tiled level.

    A thread pool reads and splices tile bytes ahead; one decode thread turns them into patches on
    its own CUDA stream, so reading, decoding and the encoder (on the caller's stream) overlap.
    Memory stays bounded: at most `prefetch` batches are in flight.
    """

    def __init__(
        self,
        level: JpegTiledLevel,
        coords: np.ndarray,
        downsample: float,
        read_size: int,
        patch_size: int,
        batch_size: int,
        device: torch.device,
        decode: Callable[[list[bytes], JpegTiledLevel], torch.Tensor],
        prefetch: int = 3,
        readers: int = 2,
    ) -> None:
        self.level = level
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.downsample = downsample
        self.read_size = read_size
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.device = device
        self.decode = decode
        self.prefetch = max(1, prefetch)
        self.readers = max(1, readers)

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    def _read(self, reader: TileBytes, start: int) -> tuple[TilePlan, list[bytes]]:
        chunk = self.coords[start : start + self.batch_size]
        plan = plan_batch(self.level, chunk, self.downsample, self.read_size)
        streams = [reader.read(int(i)) for i in plan.tiles]
        return plan, [s for s in streams if s is not None]

    def _make(self, plan: TilePlan, streams: list[bytes]) -> torch.Tensor:
        decoded = self.decode(streams, self.level).to(self.device)
        return assemble(decoded, plan, self.level, self.read_size, self.patch_size)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        from concurrent.futures import ThreadPoolExecutor

        starts = list(range(0, len(self.coords), self.batch_size))
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(device=self.device) if cuda else None
        reader = TileBytes(self.level)
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                with ThreadPoolExecutor(self.readers) as pool:
                    pending = [pool.submit(self._read, reader, s) for s in starts[: self.prefetch]]
                    for k, start in enumerate(starts):
                        if stop.is_set():
                            return
                        plan, streams = pending[k].result()
                        if k + self.prefetch < len(starts):
                            pending.append(
                                pool.submit(self._read, reader, starts[k + self.prefetch])
                            )
                        pending[k] = None  # type: ignore[call-overload]
                        if cuda:
                            with torch.cuda.stream(side):
                                x = self._make(plan, streams)
                                event = torch.cuda.Event()
                                event.record(side)
                        else:
                            x, event = self._make(plan, streams), None
                        ready.put((start, x, event))
                ready.put(None)
            except BaseException as error:  # hand the error to the consumer
                ready.put(error)

        worker = threading.Thread(target=produce, name="jpeg-decode", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                start, x, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    x.record_stream(current)
                yield start, x
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
            reader.close()
