"""Feature extraction for one slide: every patch of its tiles file through the encoder's backbone.

Eval mode, no augmentation, fixed order (row i of the features is row i of the tiles file), so the
same encoder on the same slide gives the same features (bit for bit on the CPU with fixed threads).
The pixels come from hnm.extract.sources, which picks per slide (and logs) the fastest way to read
them: JPEG tiles decoded on the GPU, on the CPU, or openslide. Features stream into the HDF5 file
batch by batch, so memory does not grow with the slide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hnm.core.device import resolve_device, resolve_precision
from hnm.core.errors import ConfigError, SlideError
from hnm.core.progress import Progress
from hnm.core.threads import usable_cores
from hnm.encoders import EncoderFileMeta, load_encoder_file, read_encoder_meta
from hnm.encoders.inputs import check_patch_size, check_preset_resolution
from hnm.extract.settings import ExtractSettings
from hnm.extract.sources import choose_source
from hnm.io.h5io import (
    FeatureWriter,
    OutPath,
    PathOrSlide,
    as_slide_data,
    batch_file,
    read_tiles_or_fail,
)
from hnm.io.patches import PatchGeometry

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    rows: int
    decode_path: str
    seconds: float
    throughput: float
    failed: bool
    error: str


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
        channel_order: str = "rgb",
    ) -> None:
        self.bgr = channel_order == "bgr"
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
        if self.bgr:
            batch = batch.flip(1)
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
        out.copy_(batch.flip(3) if self.bgr else batch)
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


def precision_context(
    device: torch.device, precision: str
) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the stage -----------------------------------------------------------------------------------


def _base_attrs(
    slide_id: str,
    slide_path: str,
    tiles_path: PathOrSlide,
    tiles_attrs: dict[str, Any],
    meta: EncoderFileMeta,
    round_: int,
    dtype: str,
) -> dict[str, Any]:
    return {
        "slide_id": slide_id,
        "slide_path": os.fspath(slide_path),
        "tiles_file": os.fspath(as_slide_data(tiles_path).path),
        "round": int(round_),
        "encoder_arch": meta.arch,
        "encoder_arch_kwargs": meta.arch_kwargs,
        "encoder_file": meta.path,
        "encoder_source": meta.source,
        "encoder_epoch": meta.epoch,
        "weights_sha256": meta.weights_sha256,
        "feature_dim": meta.feature_dim,
        "dtype": dtype,
        "mpp": tiles_attrs.get("mpp", float("nan")),
        "target_mpp": tiles_attrs.get("target_mpp", float("nan")),
        "patch_size": tiles_attrs.get("patch_size", 0),
        "level": tiles_attrs.get("level", -1),
        "read_size": tiles_attrs.get("read_size", 0),
        "failed": bool(tiles_attrs.get("failed", False)),
        "error": str(tiles_attrs.get("error", "")),
    }


def _write_empty(out_path: OutPath, attrs: dict[str, Any], dim: int, **extra: Any) -> None:
    empty = np.zeros((0, 2), np.int64)
    with FeatureWriter(out_path, dim, empty, {**attrs, **extra}, dtype=attrs["dtype"]):
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
    jobs: list[tuple[str, str, PathOrSlide, OutPath]],
    encoder_path: str,
    round_: int,
    settings: ExtractSettings = ExtractSettings(),
) -> list[ExtractResult]:
    """`extract_slide` for each (slide path, slide id, tiles, out), one encoder load."""
    encoder = JobEncoder(encoder_path, settings)
    return [
        extract_slide(slide, slide_id, tiles, encoder_path, round_, out, settings, encoder)
        for slide, slide_id, tiles, out in jobs
    ]


def extract_batch(
    slides: list[tuple[str, str, PathOrSlide]],
    encoder_path: str,
    round_: int,
    out: str | os.PathLike[str],
    settings: ExtractSettings = ExtractSettings(),
) -> list[ExtractResult]:
    """Every (slide path, slide id, tiles) into one batch features file, a group per slide; the
    file appears only when every slide is in."""
    with batch_file(out) as batch:
        results = extract_slides(
            [(*slide, batch.slide(slide[1])) for slide in slides], encoder_path, round_, settings
        )
    log.info("wrote %s (%d slides)", out, len(slides))
    return results


def extract_slide(
    slide_path: str,
    slide_id: str,
    tiles_path: PathOrSlide,
    encoder_path: str,
    round_: int,
    out_path: OutPath,
    settings: ExtractSettings = ExtractSettings(),
    encoder: JobEncoder | None = None,
) -> ExtractResult:
    """Features of one slide; `encoder` shares a loaded encoder between the slides of a job."""
    settings.validate()
    coords, tiles_attrs = read_tiles_or_fail(tiles_path)
    if tiles_attrs.get("failed") or len(coords) == 0:
        meta = read_encoder_meta(encoder_path)
        attrs = _base_attrs(
            slide_id, slide_path, tiles_path, tiles_attrs, meta, round_, settings.feature_dtype
        )
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
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads or usable_cores())
    if encoder is None or encoder.path != encoder_path:
        encoder = JobEncoder(encoder_path, settings)
    model, meta, backbone = encoder.load(device)
    geometry = PatchGeometry.from_attrs(tiles_attrs)
    check_patch_size(meta.arch, meta.arch_kwargs, geometry.patch_size)
    check_preset_resolution(meta, tiles_attrs, tiles_path)
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
    attrs = _base_attrs(
        slide_id, slide_path, tiles_path, tiles_attrs, meta, round_, settings.feature_dtype
    )
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
    out_path: OutPath,
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
    preprocess = Preprocess(meta.mean, meta.std, device, channels_last, meta.channel_order)
    progress = Progress(len(coords), slide_id, log, unit="patches")
    started = time.perf_counter()
    with FeatureWriter(
        out_path,
        meta.feature_dim,
        coords,
        {**attrs, "decode_path": path, "decode_fallback_reason": why_not, "precision": precision},
        dtype=settings.feature_dtype,
    ) as writer:
        sink = FeatureSink(writer, device)
        with progress, torch.inference_mode(), precision_context(device, precision):
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
