"""Feature extraction for one slide: every patch of its tiles file through the encoder's backbone.

Eval mode, no augmentation, fixed order (row i of the features is row i of the tiles file), so the
same encoder on the same slide gives the same features (bit for bit on the CPU with fixed threads).
Two ways to get pixels to the encoder, chosen per slide and logged:
- cpu: worker processes (torch DataLoader) read contiguous batches with openslide, each opening the
  slide once, while the main process runs the encoder; pinned memory + non_blocking copies on CUDA.
- gpu: the level's JPEG tiles decoded with nvjpeg and cut into patches on the GPU (hnm.extract.gpu_decode),
  for slides whose read level is JPEG-tiled; anything else falls back to cpu.
Features stream into the HDF5 file batch by batch, so memory does not grow with the slide.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hnm.encoders import EncoderFileMeta, load_encoder_file, read_encoder_meta
from hnm.core.errors import ConfigError, HnmError, SlideError
from hnm.io.h5io import FeatureWriter, read_tiles
from hnm.io.patches import JpegTileReader, PatchGeometry, PatchReader, jpeg_level
from hnm.core.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSettings:
    """Knobs of the stage (CLI flags of `hnm extract`)."""

    batch_size: int = 256
    workers: int = 2  # reader processes on the cpu path
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on the CPU
    decode: str = (
        "auto"  # auto | gpu | cpu (JPEG tiles decoded on the CPU, else openslide) | openslide
    )
    channels_last: bool = (
        True  # faster with cuDNN and oneDNN alike (1.5-2x for ResNets on a 2-core CPU)
    )
    compile: bool = False
    threads: int = 0  # CPU intra-op threads for the encoder; 0 = every core this process may use
    prefetch: int = 4  # batches read ahead per worker
    on_slide_error: str = "fail"  # fail | skip (write an empty features file marked failed)
    max_patches: int = 0  # benchmarks/debugging only: extract the first N patches (0 = all)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, not '{self.precision}'")
        if self.decode not in ("auto", "cpu", "gpu", "openslide"):
            raise ConfigError(f"decode must be auto, gpu, cpu or openslide, not '{self.decode}'")
        if self.max_patches < 0:
            raise ConfigError(f"max_patches must be >= 0 (0 = all), got {self.max_patches}")
        if self.on_slide_error not in ("fail", "skip"):
            raise ConfigError(f"on_slide_error must be fail or skip, not '{self.on_slide_error}'")


@dataclass
class ExtractResult:
    rows: int
    decode_path: str
    seconds: float
    throughput: float
    failed: bool
    error: str


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---- the cpu path --------------------------------------------------------------------------------


class _ReadFailure:
    """A read error carried out of a worker intact (DataLoader would re-raise it as RuntimeError)."""

    def __init__(self, message: str) -> None:
        self.message = message


class ContiguousBatches(torch.utils.data.Dataset):
    """Item i = patches [i*B, (i+1)*B) as uint8 (B, P, P, 3): neighbours share tiles in the cache."""

    def __init__(self, reader: PatchReader | JpegTileReader, batch_size: int) -> None:
        self.reader = reader
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.reader) / self.batch_size)

    def __getitem__(self, index: int) -> torch.Tensor | _ReadFailure:
        start = index * self.batch_size
        try:
            return torch.from_numpy(self.reader.read_range(start, start + self.batch_size))
        except HnmError as error:
            return _ReadFailure(str(error))


def _worker_init(_: int) -> None:
    # Readers decode JPEG and resize with Pillow; torch threads there would only fight the encoder.
    torch.set_num_threads(1)


def overlapped_batches(
    reader: PatchReader | JpegTileReader, settings: ExtractSettings, device: torch.device
) -> Iterator[torch.Tensor]:
    """Worker processes read ahead while the encoder runs (on spare cores, or beside a GPU)."""
    if isinstance(reader, JpegTileReader):
        reader.cache_tiles = 0  # consecutive batches go to different workers: nothing to reuse
    loader = torch.utils.data.DataLoader(
        ContiguousBatches(reader, settings.batch_size),
        batch_size=None,
        shuffle=False,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=settings.prefetch,
        worker_init_fn=_worker_init,
    )
    for batch in loader:
        if isinstance(batch, _ReadFailure):
            raise SlideError(
                reader.slide_id, reader.slide_path, f"reading patches failed: {batch.message}"
            )
        yield batch


def phased_batches(
    reader: PatchReader | JpegTileReader, settings: ExtractSettings
) -> Iterator[torch.Tensor]:
    """Read each batch with `workers` threads between encoder steps, not during them.

    When the encoder's threads already occupy every core, readers running beside it preempt those
    threads, and each preempted thread stalls the others at the next barrier: on 2 cores a
    resnet18 forward took 1.8x as long with 2 reader processes beside it, for readers needing
    under a tenth of its CPU time. Reading in its own phase, on all cores (JPEG decoding, openslide
    and Pillow release the GIL), costs only the reading itself.
    """
    from concurrent.futures import ThreadPoolExecutor

    n, size = len(reader), settings.batch_size
    reader.open()  # once, before the threads share it (pread and openslide are thread-safe)
    threads = max(1, settings.workers)
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, n, size):
            stop = min(n, start + size)
            chunks = [c for c in np.array_split(np.arange(start, stop), threads) if len(c)]
            try:
                parts = list(pool.map(reader.read, chunks))
            except HnmError as error:
                raise SlideError(
                    reader.slide_id, reader.slide_path, f"reading patches failed: {error}"
                ) from error
            yield torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))


def cpu_batches(
    reader: PatchReader | JpegTileReader, settings: ExtractSettings, device: torch.device
) -> tuple[Iterator[torch.Tensor], str]:
    """(batches, how they are read): overlapped only where the readers do not take the encoder's cores."""
    if device.type == "cuda":
        if settings.workers > 0:
            return (
                overlapped_batches(reader, settings, device),
                f"{settings.workers} reader processes",
            )
        return phased_batches(reader, settings), "reading in the main process"
    encoder_threads = torch.get_num_threads()
    if settings.workers > 0 and encoder_threads + settings.workers <= available_cores():
        return overlapped_batches(reader, settings, device), (
            f"{settings.workers} reader processes beside {encoder_threads} encoder threads"
        )
    return phased_batches(reader, settings), (
        f"{max(1, settings.workers)} reader threads between encoder steps (the encoder's "
        f"{encoder_threads} threads use every core)"
    )


# ---- encoder loop --------------------------------------------------------------------------------


class Preprocess:
    """uint8 NHWC (cpu paths) or float NCHW 0..255 (gpu path) -> normalised float NCHW on device.

    On the CPU this is memory-bound and was a fifth of resnet_mini's time: it writes into one
    reused buffer (no page faults from a fresh 38 MB tensor per batch) with one fused
    multiply-add per row (x * 1/std - mean/std), about 3.5x cheaper than float/sub/div. The result
    is a view of that buffer, valid until the next call.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        channels_last: bool,
    ) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.device = device
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self._buffer: torch.Tensor | None = None
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu" and batch.dtype == torch.uint8:
            return self._cpu(batch)
        batch = batch.to(self.device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = batch.permute(0, 3, 1, 2)  # NHWC storage = channels_last NCHW, no copy
        x = batch.float().sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.format)

    def _cpu(self, batch: torch.Tensor) -> torch.Tensor:
        n, h, w, c = batch.shape
        buffer = self._buffer
        if buffer is None or buffer.shape[1:] != batch.shape[1:] or buffer.shape[0] < n:
            buffer = self._buffer = torch.empty(batch.shape, dtype=torch.float32)
        if w not in self._rows:
            scale = (1.0 / self.std).view(3).repeat(w)
            shift = (-self.mean / self.std).view(3).repeat(w)
            self._rows[w] = (scale, shift)
        scale, shift = self._rows[w]
        out = buffer[:n]
        out.copy_(batch)
        rows = out.view(n * h, w * c)
        torch.addcmul(shift, rows, scale, out=rows)
        return out.permute(0, 3, 1, 2).contiguous(memory_format=self.format)


class FeatureSink:
    """Moves features to the host and into the file; on CUDA one batch behind, so copies overlap."""

    def __init__(self, writer: FeatureWriter, device: torch.device) -> None:
        self.writer = writer
        self.cuda = device.type == "cuda"
        self.pending: deque[tuple[torch.Tensor, Any]] = deque()

    def put(self, features: torch.Tensor) -> None:
        features = features.float()
        if not self.cuda:
            self.writer.append(features.numpy())
            return
        host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(features, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))
        if len(self.pending) > 1:
            self._drain_one()

    def _drain_one(self) -> None:
        host, event = self.pending.popleft()
        event.synchronize()
        self.writer.append(host.numpy())

    def flush(self) -> None:
        while self.pending:
            self._drain_one()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def precision_context(
    device: torch.device, precision: str
) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- choosing the decode path --------------------------------------------------------------------


def gpu_decoder(level: Any, slide_id: str, device: torch.device) -> tuple[Any | None, str]:
    """An nvjpeg decoder whose colours agree with Pillow on this slide's tiles, or (None, why not)."""
    from hnm.extract import gpu_decode

    raw_ok, why_not_raw = gpu_decode.raw_planes_are_rgb(level)
    candidates = [("torchvision", lambda: gpu_decode.make_nvjpeg_decoder(device))]
    if raw_ok:
        candidates.insert(0, ("coded planes", lambda: gpu_decode.make_raw_nvjpeg_decoder(device)))
    differences = [] if raw_ok else [f"coded planes: {why_not_raw}"]
    for name, make in candidates:
        try:
            decode = make()
            agrees, difference = gpu_decode.check_decoder(decode, level)
        except Exception as error:  # nvjpeg missing or refusing the streams: the CPU path works
            differences.append(
                f"{name}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            )
            continue
        if agrees:
            log.info(
                "%s: nvjpeg (%s) agrees with Pillow on sample tiles (mean |diff| %.2f)",
                slide_id,
                name,
                difference,
            )
            return decode, ""
        differences.append(f"{name}: mean |diff| {difference:.1f}")
    return None, f"nvjpeg colours disagree with Pillow ({'; '.join(differences)})"


def choose_source(
    slide_path: str,
    slide_id: str,
    coords: np.ndarray,
    geometry: PatchGeometry,
    settings: ExtractSettings,
    device: torch.device,
) -> tuple[str, Iterator[torch.Tensor], str]:
    """(decode path, batches, why a faster path was not taken)."""
    from hnm.extract import gpu_decode

    why = ""
    level = None
    if settings.decode != "openslide":
        level, why = jpeg_level(slide_path, slide_id, geometry.level)
    if settings.decode in ("auto", "gpu"):
        machine_ok, why_machine = gpu_decode.nvjpeg_available()
        if device.type != "cuda":
            machine_ok, why_machine = False, "no CUDA device"
        if not machine_ok and settings.decode == "gpu":  # a setting this machine cannot honour
            raise ConfigError(
                f"decode=gpu is not possible here: {why_machine}; use decode: auto or cpu"
            )
        if not machine_ok:
            why = why_machine
        elif level is not None:  # else `why` says why the slide cannot take it
            decode, why = gpu_decoder(level, slide_id, device)
            if decode is not None:
                source = gpu_decode.JpegPatchSource(
                    level,
                    coords,
                    geometry.level_downsample,
                    geometry.read_size,
                    geometry.patch_size,
                    settings.batch_size,
                    device,
                    decode,
                    prefetch=max(2, settings.prefetch),
                    readers=max(1, settings.workers),
                )
                return "gpu-nvjpeg", (x for _, x in source), ""
        if settings.decode == "gpu":
            log.warning(
                "%s: decode=gpu but this slide cannot take the GPU path (%s); decoding on the CPU",
                slide_id,
                why,
            )
    reader: PatchReader | JpegTileReader
    if level is not None:
        reader = JpegTileReader(level, coords, geometry, slide_id, slide_path)
    else:
        reader = PatchReader(slide_path, coords, geometry, slide_id)
    path = reader.path_name
    reader.open()  # fail here, with the slide named, rather than inside a worker
    reader.close()
    batches, how = cpu_batches(reader, settings, device)
    log.info("%s: %s", slide_id, how)
    return path, batches, why


# ---- the stage -----------------------------------------------------------------------------------


def _base_attrs(
    slide_id: str,
    slide_path: str,
    tiles_path: str,
    tiles_attrs: dict[str, Any],
    meta: EncoderFileMeta,
    round_: int,
) -> dict[str, Any]:
    return {
        "slide_id": slide_id,
        "slide_path": os.fspath(slide_path),
        "tiles_file": os.fspath(tiles_path),
        "round": int(round_),
        "encoder_arch": meta.arch,
        "encoder_arch_kwargs": meta.arch_kwargs,
        "encoder_file": meta.path,
        "encoder_source": meta.source,
        "encoder_epoch": meta.epoch,
        "weights_sha256": meta.weights_sha256,
        "feature_dim": meta.feature_dim,
        "dtype": "float32",
        "mpp": tiles_attrs.get("mpp", float("nan")),
        "target_mpp": tiles_attrs.get("target_mpp", float("nan")),
        "patch_size": tiles_attrs.get("patch_size", 0),
        "level": tiles_attrs.get("level", -1),
        "read_size": tiles_attrs.get("read_size", 0),
        "failed": bool(tiles_attrs.get("failed", False)),
        "error": str(tiles_attrs.get("error", "")),
    }


def _write_empty(out_path: str, attrs: dict[str, Any], dim: int, **extra: Any) -> None:
    with FeatureWriter(out_path, dim, np.zeros((0, 2), np.int64), {**attrs, **extra}):
        pass


class JobEncoder:
    """One job's encoder: loaded, put in channels_last and compiled once for all its slides.

    A fresh model per slide would make torch.compile trace again for every slide of a batch."""

    def __init__(self, encoder_path: str, settings: ExtractSettings) -> None:
        self.path = encoder_path
        self.settings = settings
        self._loaded: tuple[Any, EncoderFileMeta, Any] | None = None

    def load(self, device: torch.device) -> tuple[Any, EncoderFileMeta, Any]:
        """(model, meta, backbone ready to run)."""
        if self._loaded is None:
            model, meta = load_encoder_file(self.path, device)
            backbone = model.backbone
            if self.settings.channels_last:
                backbone = backbone.to(memory_format=torch.channels_last)
            if self.settings.compile:
                backbone = torch.compile(backbone)
            self._loaded = (model, meta, backbone)
        return self._loaded


def extract_slides(
    jobs: list[tuple[str, str, str, str]],
    encoder_path: str,
    round_: int,
    settings: ExtractSettings = ExtractSettings(),
) -> list[ExtractResult]:
    """`extract_slide` for each (slide path, slide id, tiles path, out path), one encoder load."""
    encoder = JobEncoder(encoder_path, settings)
    return [
        extract_slide(slide, slide_id, tiles, encoder_path, round_, out, settings, encoder)
        for slide, slide_id, tiles, out in jobs
    ]


def extract_slide(
    slide_path: str,
    slide_id: str,
    tiles_path: str,
    encoder_path: str,
    round_: int,
    out_path: str,
    settings: ExtractSettings = ExtractSettings(),
    encoder: JobEncoder | None = None,
) -> ExtractResult:
    """Features of one slide; `encoder` shares a loaded encoder between the slides of a job."""
    settings.validate()
    try:
        coords, tiles_attrs = read_tiles(tiles_path)
    except (OSError, KeyError) as error:
        raise HnmError(
            f"tiles file {tiles_path} cannot be read ({error}); re-run tiling"
        ) from error
    if tiles_attrs.get("failed") or len(coords) == 0:
        meta = read_encoder_meta(encoder_path)
        attrs = _base_attrs(slide_id, slide_path, tiles_path, tiles_attrs, meta, round_)
        why = tiles_attrs.get("error") or "no tissue patches"
        log.warning(
            "%s: tiles file %s is %s (%s); writing an empty features file",
            slide_id,
            tiles_path,
            "marked failed" if tiles_attrs.get("failed") else "empty",
            why,
        )
        _write_empty(
            out_path,
            attrs,
            meta.feature_dim,
            decode_path="none",
            precision="none",
            throughput_img_s=0.0,
            seconds=0.0,
        )
        return ExtractResult(
            0, "none", 0.0, 0.0, bool(tiles_attrs.get("failed")), str(tiles_attrs.get("error", ""))
        )
    from hnm.core.device import resolve_device

    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads or available_cores())
    if encoder is None or encoder.path != encoder_path:
        encoder = JobEncoder(encoder_path, settings)
    model, meta, backbone = encoder.load(device)
    geometry = PatchGeometry.from_attrs(tiles_attrs)
    if geometry.patch_size != meta.patch_size:
        if model.spec.fixed_input:
            raise ConfigError(
                f"encoder {meta.arch} takes {meta.patch_size} px patches but tiles file {tiles_path} "
                f"has patch_size {geometry.patch_size}; tile with patch_size {meta.patch_size}"
            )
        log.info(
            "%s: %d px patches into %s (nominal %d px; convolutional, any size works)",
            slide_id,
            geometry.patch_size,
            meta.arch,
            meta.patch_size,
        )
    attrs = _base_attrs(slide_id, slide_path, tiles_path, tiles_attrs, meta, round_)
    if settings.max_patches and len(coords) > settings.max_patches:
        log.warning(
            "%s: max_patches=%d: extracting only the first %d of %d patches (not for real runs)",
            slide_id,
            settings.max_patches,
            settings.max_patches,
            len(coords),
        )
        attrs["truncated_from"] = len(coords)
        coords = coords[: settings.max_patches]
    try:
        return _run(
            backbone,
            meta,
            coords,
            geometry,
            attrs,
            slide_path,
            slide_id,
            out_path,
            settings,
            device,
            precision,
        )
    except SlideError as error:
        if settings.on_slide_error != "skip":
            raise
        log.error(
            "%s: %s; on_slide_error=skip: writing an empty features file marked failed",
            slide_id,
            error.problem,
        )
        attrs.update(failed=True, error=error.problem)
        _write_empty(
            out_path,
            attrs,
            meta.feature_dim,
            decode_path="none",
            precision=precision,
            throughput_img_s=0.0,
            seconds=0.0,
        )
        return ExtractResult(0, "none", 0.0, 0.0, True, error.problem)


def _run(
    backbone: Any,
    meta: EncoderFileMeta,
    coords: np.ndarray,
    geometry: PatchGeometry,
    attrs: dict[str, Any],
    slide_path: str,
    slide_id: str,
    out_path: str,
    settings: ExtractSettings,
    device: torch.device,
    precision: str,
) -> ExtractResult:
    channels_last = settings.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = (
            True  # fixed input shape: let cuDNN pick its fastest kernels
        )
    path, batches, why_not = choose_source(slide_path, slide_id, coords, geometry, settings, device)
    log.info(
        "%s: %d patches, decode path %s%s; %s on %s, %s, batch %d, %s workers, %d threads",
        slide_id,
        len(coords),
        path,
        f" ({why_not})" if why_not else "",
        meta.arch,
        device,
        precision,
        settings.batch_size,
        settings.workers,
        torch.get_num_threads(),
    )
    preprocess = Preprocess(meta.mean, meta.std, device, channels_last)
    progress = Progress(len(coords), f"{slide_id} patches", log)
    started = time.perf_counter()
    with FeatureWriter(
        out_path,
        meta.feature_dim,
        coords,
        {**attrs, "decode_path": path, "decode_fallback_reason": why_not, "precision": precision},
    ) as writer:
        sink = FeatureSink(writer, device)
        with torch.inference_mode(), precision_context(device, precision):
            for batch in batches:
                sink.put(backbone(preprocess(batch)))
                progress.update(len(batch))
        sink.flush()
        seconds = time.perf_counter() - started
        rate = len(coords) / seconds if seconds > 0 else 0.0
        writer.update_attrs({"throughput_img_s": round(rate, 2), "seconds": round(seconds, 3)})
    log.info(
        "%s: wrote %s (%d x %d) in %.1f s, %.1f img/s via %s",
        slide_id,
        out_path,
        len(coords),
        meta.feature_dim,
        seconds,
        rate,
        path,
    )
    return ExtractResult(len(coords), path, seconds, rate, False, "")
