"""Patches from a slide's JPEG tiles, decoded on the GPU: the part of tile reading that needs torch,
CUDA or nvjpeg (the tile bytes and batch plans themselves are hnm.io.jpeg_tiles).

Why: on a GPU machine, decoding JPEG tiles on the CPU (openslide/pyvips) caps extraction at a few
thousand patches per second, far below the encoder (docs/performance.md). Where the pyramid level we
read is JPEG-tiled, batches of complete tile streams (hnm.io.jpeg_tiles) are decoded with nvjpeg and
the patches cut out of the decoded tiles on the GPU.

Colour: nvjpeg ignores the Adobe marker hnm.io.jpeg_tiles inserts and converts every 3-component
stream as YCbCr, so YCbCr-coded tiles go through torchvision's decode_jpeg and RGB-coded 4:4:4
tiles through hnm.extract.nvjpeg_raw, which asks nvjpeg for the coded planes. Either decoder is
checked against Pillow on a few tiles of each slide before it is trusted (else the CPU path).

Geometry is jpeg_tiles' (openslide's read_region); read_size -> patch_size uses torch's bilinear
with antialiasing (Pillow's BILINEAR on the CPU path). `assemble` runs on any torch device, so it
is checked on the CPU against openslide too.
"""

from __future__ import annotations

import io
import math
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hnm.io.jpeg_tiles import PHOTOMETRIC_RGB, JpegTiledLevel, TileBytes, TilePlan, plan_batch


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
