"""Reading a slide's patches by index, as the encoder sees them, and choosing how.

A tiles file fixes where each patch lies (level-0 top-left), which pyramid level to read, how many
pixels to read there (read_size) and the size the encoder gets (patch_size). A reader opens the
slide once per process and keeps it open (opening an SVS costs milliseconds, reading a patch less),
so DataLoader workers and fine-tuning loaders can call it for any indices, in any order.

Two readers give the same pixels: JpegTileReader decodes a JPEG-tiled level's tiles itself
(hnm.io.jpeg_tiles), several times cheaper; PatchReader asks openslide and reads anything.
`open_patch_reader` is the one place that chooses between them, for every stage that reads patches.

Resizing read_size -> patch_size uses Pillow's BILINEAR filter, which is antialiased when shrinking
(its support widens with the scale factor, so a 2:1 reduction averages 2x2 blocks smoothly) and
deterministic; the GPU path uses torch's bilinear with antialias=True, which follows the same
definition (differences of a grey level or so).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openslide
from PIL import Image

from hnm.core.errors import SlideError
from hnm.io.jpeg_tiles import (
    JpegTiledLevel,
    NotJpegTiled,
    TileBytes,
    assemble_numpy,
    decode_cpu,
    level_positions,
    plan_batch,
)
from hnm.io.slide import open_slide, read_rgb


@dataclass(frozen=True)
class PatchGeometry:
    """The tiles-file attributes that say how to read a patch."""

    level: int
    level_downsample: float
    read_size: int
    patch_size: int

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "PatchGeometry":
        missing = [k for k in ("level", "read_size", "patch_size") if k not in attrs]
        if missing:
            raise ValueError(f"tiles attributes lack {missing}")
        return cls(
            level=int(attrs["level"]),
            level_downsample=float(attrs.get("level_downsample", 1.0)),
            read_size=int(attrs["read_size"]),
            patch_size=int(attrs["patch_size"]),
        )


def resize_patch(rgb: np.ndarray, size: int) -> np.ndarray:
    """read_size -> patch_size with Pillow BILINEAR (antialiased when shrinking); no-op if equal."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def region_to_patch(region: Image.Image, size: int) -> np.ndarray:
    """openslide's RGBA region -> RGB on white, resized; the same pixels as hnm.io.slide.read_rgb.

    Tissue regions are almost always fully opaque: then Pillow's own conversion (C, no per-pixel
    arithmetic in numpy) gives the identical RGB, about 4x faster, which keeps reader workers from
    competing with the encoder for CPU time.
    """
    if region.getchannel("A").getextrema()[0] == 255:
        rgb = region.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb)
    rgba = np.asarray(region)
    alpha = rgba[..., 3:4].astype(np.uint16)
    composited = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255
    return resize_patch(composited.astype(np.uint8), size)


def jpeg_level(slide_path: str, slide_id: str, level: int) -> tuple[JpegTiledLevel | None, str]:
    """(the JPEG-tiled TIFF page behind openslide's `level`, "") or (None, why it is not one)."""
    slide = open_slide(slide_path, slide_id)
    try:
        if not 0 <= level < slide.level_count:
            raise SlideError(
                slide_id,
                slide_path,
                f"the tiles file asks for level {level} but the slide "
                f"has {slide.level_count} level(s)",
                "re-run tiling for this slide",
            )
        size = slide.level_dimensions[level]
    finally:
        slide.close()
    try:
        return JpegTiledLevel.inspect(slide_path, size), ""
    except NotJpegTiled as reason:
        return None, f"level {level} is not JPEG-tiled: {reason}"


def open_patch_reader(
    slide_path: str | os.PathLike[str],
    coords: np.ndarray,
    attrs: dict[str, Any] | PatchGeometry,
    slide_id: str | None = None,
    prefer_tiles: bool = True,
    cache_mb: int = 64,
    exact: bool = False,
) -> "PatchReader | JpegTileReader":
    """The cheapest reader for this slide: JPEG tiles where the level allows, else openslide.

    `reader.path_name` says which it is; a PatchReader's `why_not_tiles` says why (empty when
    tiles were not asked for). `cache_mb` bounds the decoded tiles a JpegTileReader keeps.
    `exact`: JPEG tiles only where their pixels equal openslide's bit for bit, i.e. unless some
    patch falls between level pixels: openslide's fixed-point blend there differs from the tile
    reader's by a grey level here and there.
    """
    slide_path = os.fspath(slide_path)
    default_id = os.path.basename(slide_path)
    if isinstance(attrs, PatchGeometry):
        geometry = attrs
    else:
        geometry = PatchGeometry.from_attrs(attrs)
        default_id = str(attrs.get("slide_id", default_id))
    slide_id = slide_id or default_id
    why = ""
    if prefer_tiles:
        level, why = jpeg_level(slide_path, slide_id, geometry.level)
        if level is not None and exact:
            _, frac = level_positions(coords, geometry.level_downsample)
            if frac.any():
                level = None
                why = (
                    f"patches fall between level-{geometry.level} pixels, where only openslide "
                    "gives openslide's pixels"
                )
        if level is not None:
            return JpegTileReader(level, coords, geometry, slide_id, slide_path, cache_mb)
    return PatchReader(slide_path, coords, geometry, slide_id, why_not_tiles=why)


class _PatchGrid:
    """What both readers share: one slide's patch coordinates and their read geometry."""

    coords: np.ndarray
    geometry: PatchGeometry

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def patch_size(self) -> int:
        return self.geometry.patch_size


class PatchReader(_PatchGrid):
    """uint8 RGB patches (B, patch_size, patch_size, 3) by index; one open slide per process."""

    path_name = "cpu-openslide"

    def __init__(
        self,
        slide_path: str | os.PathLike[str],
        coords: np.ndarray,
        attrs: dict[str, Any] | PatchGeometry,
        slide_id: str | None = None,
        why_not_tiles: str = "",
    ) -> None:
        """`attrs`: the tiles file's attributes (or a PatchGeometry made from them);
        `why_not_tiles`: why the faster JpegTileReader is not reading this slide, for logs."""
        self.slide_path = os.fspath(slide_path)
        self.why_not_tiles = why_not_tiles
        default_id = os.path.basename(self.slide_path)
        if isinstance(attrs, PatchGeometry):
            self.geometry = attrs
        else:
            self.geometry = PatchGeometry.from_attrs(attrs)
            default_id = str(attrs.get("slide_id", default_id))
        self.slide_id = slide_id or default_id
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self._slide: Any = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes open their own handle: an OpenSlide object cannot cross processes.
        state = dict(self.__dict__)
        state["_slide"] = None
        state["_pid"] = None
        return state

    def open(self) -> Any:
        """The open slide (opened on first use in each process); checks the level exists."""
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, self.slide_id)
            self._pid = os.getpid()
            level_count = self._slide.level_count
            if not 0 <= self.geometry.level < level_count:
                raise SlideError(
                    self.slide_id,
                    self.slide_path,
                    f"the tiles file asks for level {self.geometry.level} but the slide has "
                    f"{level_count} level(s)",
                    "re-run tiling for this slide",
                )
        return self._slide

    def read_one(self, index: int) -> np.ndarray:
        slide = self.open()
        x, y = (int(v) for v in self.coords[index])
        g = self.geometry
        try:
            region = slide.read_region((x, y), g.level, (g.read_size, g.read_size))
        except openslide.OpenSlideError:
            # Let the shared reader word the error (slide id, path, position, what to do).
            read_rgb(
                slide, (x, y), g.level, (g.read_size, g.read_size), self.slide_id, self.slide_path
            )
            raise
        return region_to_patch(region, g.patch_size)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        size = self.geometry.patch_size
        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            out[row] = self.read_one(int(index))
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.read(range(start, min(stop, len(self))))

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class JpegTileReader(_PatchGrid):
    """PatchReader's twin for JPEG-tiled TIFF levels: compressed tiles read and decoded directly.

    Each tile a batch needs is decoded once (libjpeg-turbo via imagecodecs) and shared by every
    patch on it, then cut with numpy: about a quarter of openslide's CPU time per 224 px patch,
    and far less for small patches. Recently decoded tiles are kept (up to `cache_mb`), so a tile
    shared by two consecutive batches is not decoded twice. Pixels equal openslide's (same
    decoder, same white outside the slide, openslide's bilinear blend for fractional level
    positions); the resize is the same Pillow BILINEAR.
    """

    path_name = "cpu-jpeg-tiles"

    def __init__(
        self,
        level: JpegTiledLevel,
        coords: np.ndarray,
        geometry: PatchGeometry,
        slide_id: str,
        slide_path: str,
        cache_mb: int = 64,
    ) -> None:
        self.level = level
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.geometry = geometry
        self.slide_id = slide_id
        self.slide_path = os.fspath(slide_path)
        tile_bytes = level.tile_width * level.tile_height * 3
        self.cache_tiles = max(0, cache_mb * 2**20 // tile_bytes)
        self._bytes: TileBytes | None = None
        self._pid: int | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_bytes=None, _pid=None, _cache=OrderedDict(), _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def open(self) -> TileBytes:
        if self._bytes is None or self._pid != os.getpid():
            try:
                self._bytes = TileBytes(self.level)
            except OSError as error:
                raise SlideError(
                    self.slide_id, self.slide_path, f"cannot open it: {error}"
                ) from error
            self._pid = os.getpid()
        return self._bytes

    def _tiles(self, indices: np.ndarray) -> list[np.ndarray]:
        """Decoded tiles for `indices` (empty tiles white), from the cache where possible."""
        with self._lock:
            found = {int(i): self._cache[int(i)] for i in indices if int(i) in self._cache}
        missing = [int(i) for i in indices if int(i) not in found]
        if missing:
            source = self.open()
            try:
                streams = [source.read(i) for i in missing]
                decoded = iter(decode_cpu([s for s in streams if s is not None], self.level))
            except (OSError, RuntimeError, ValueError) as error:  # imagecodecs: RuntimeError
                raise SlideError(
                    self.slide_id,
                    self.slide_path,
                    f"decoding JPEG tiles failed: {error}",
                    "the slide's tile data is probably corrupt",
                ) from error
            white = np.full((self.level.tile_height, self.level.tile_width, 3), 255, np.uint8)
            fresh = {
                i: (next(decoded) if s is not None else white) for i, s in zip(missing, streams)
            }
            found.update(fresh)
            if self.cache_tiles:
                with self._lock:
                    self._cache.update(fresh)
                    while len(self._cache) > self.cache_tiles:
                        self._cache.popitem(last=False)
        return [found[int(i)] for i in indices]

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        g = self.geometry
        plan = plan_batch(
            self.level,
            self.coords[np.asarray(indices, dtype=np.int64)],
            g.level_downsample,
            g.read_size,
        )
        patches = assemble_numpy(self._tiles(plan.tiles), plan, self.level, g.read_size)
        if g.read_size == g.patch_size:
            return patches
        return np.stack([resize_patch(p, g.patch_size) for p in patches])

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.read(np.arange(start, min(stop, len(self))))

    def close(self) -> None:
        if self._bytes is not None:
            self._bytes.close()
            self._bytes = None
        with self._lock:
            self._cache.clear()


@dataclass(frozen=True)
class ReadFailure:
    """A slide's read error carried out of a loader process intact (DataLoader would re-raise a
    SlideError as a RuntimeError without the slide's id)."""

    slide_id: str
    path: str
    problem: str
    hint: str | None

    def error(self) -> SlideError:
        return SlideError(self.slide_id, self.path, self.problem, self.hint)
