"""Where extraction's batches of pixels come from: one slide's patches, read the fastest way this
slide and machine allow, in tiles-file order.

- gpu: the level's JPEG tiles decoded with nvjpeg and cut into patches on the GPU
  (hnm.extract.gpu_decode), for slides whose read level is JPEG-tiled, once a decoder's colours
  agree with Pillow on the slide's own tiles.
- cpu: the reader hnm.io.patches.open_patch_reader picks (JPEG tiles decoded with libjpeg-turbo,
  else openslide), either in worker processes that read ahead while the encoder runs, or between
  encoder steps on every core, whichever does not steal the encoder's cores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from hnm.core.errors import ConfigError, HnmError, SlideError
from hnm.core.threads import usable_cores
from hnm.extract import gpu_decode
from hnm.extract.settings import ExtractSettings
from hnm.io.jpeg_tiles import JpegTiledLevel
from hnm.io.patches import JpegTileReader, PatchGeometry, PatchReader, open_patch_reader

log = logging.getLogger(__name__)

TileDecoder = Callable[[list[bytes], JpegTiledLevel], torch.Tensor]


class _ReadFailure:
    """A read error carried out of a worker intact (DataLoader would re-raise it as RuntimeError)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint


def _read_failed(
    reader: PatchReader | JpegTileReader, message: str, hint: str | None = None
) -> SlideError:
    """The slide's error for a failed read: the reader's own words once, not nested in ours."""
    return SlideError(
        reader.slide_id, reader.slide_path, f"reading patches failed: {message}", hint
    )


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
        except SlideError as error:
            return _ReadFailure(error.problem, error.hint)
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
            raise _read_failed(reader, batch.message, batch.hint)
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
            except SlideError as error:
                raise _read_failed(reader, error.problem, error.hint) from error
            except HnmError as error:
                raise _read_failed(reader, str(error)) from error
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
    if settings.workers > 0 and encoder_threads + settings.workers <= usable_cores():
        return overlapped_batches(reader, settings, device), (
            f"{settings.workers} reader processes beside {encoder_threads} encoder threads"
        )
    return phased_batches(reader, settings), (
        f"{max(1, settings.workers)} reader threads between encoder steps (the encoder's "
        f"{encoder_threads} threads use every core)"
    )


def gpu_decoder(
    level: JpegTiledLevel, slide_id: str, device: torch.device
) -> tuple[TileDecoder | None, str]:
    """An nvjpeg decoder whose colours agree with Pillow on this slide's tiles, or (None, why not)."""
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


def gpu_batches(
    source: Iterable[tuple[int, torch.Tensor]], reader: PatchReader | JpegTileReader
) -> Iterator[torch.Tensor]:
    """The GPU path's batches; a tile that fails to read or decode is the slide's error (so
    on_slide_error: skip holds on the GPU too), while running out of GPU memory stays the job's."""
    try:
        for _, batch in source:
            yield batch
    except torch.cuda.OutOfMemoryError:
        raise
    except SlideError as error:
        raise _read_failed(reader, error.problem, error.hint) from error
    except (OSError, RuntimeError, ValueError) as error:  # nvjpeg's refusals are RuntimeErrors
        raise _read_failed(
            reader,
            f"decoding JPEG tiles on the GPU failed: {error}",
            "the slide's tile data is probably corrupt",
        ) from error


def choose_source(
    slide_path: str,
    slide_id: str,
    coords: np.ndarray,
    geometry: PatchGeometry,
    settings: ExtractSettings,
    device: torch.device,
) -> tuple[str, Iterator[torch.Tensor], str]:
    """(decode path, batches, why a faster path was not taken)."""
    reader = open_patch_reader(
        slide_path, coords, geometry, slide_id, prefer_tiles=settings.decode != "openslide"
    )
    level = reader.level if isinstance(reader, JpegTileReader) else None
    why = reader.why_not_tiles if isinstance(reader, PatchReader) else ""
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
                return "gpu-nvjpeg", gpu_batches(source, reader), ""
        if settings.decode == "gpu":
            log.warning(
                "%s: decode=gpu but this slide cannot take the GPU path (%s); decoding on the CPU",
                slide_id,
                why,
            )
    path = reader.path_name
    reader.open()  # fail here, with the slide named, rather than inside a worker
    reader.close()
    batches, how = cpu_batches(reader, settings, device)
    log.info("%s: %s", slide_id, how)
    return path, batches, why
