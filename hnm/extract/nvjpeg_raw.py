"""nvjpeg without colour conversion, through ctypes: RGB-coded JPEG tiles decoded on the GPU.

Why: torchvision's decode_jpeg on CUDA always asks nvjpeg for RGB output (its UNCHANGED mode is
mapped to RGB too), and nvjpeg then treats every 3-component stream as YCbCr, whatever its Adobe
marker or component ids say. Aperio SVS and libvips pyramids written at Q >= 90 store RGB-coded
JPEG, so their colours come out wrong. When no component is subsampled, asking nvjpeg for its
planar YUV (or UNCHANGED) output returns the three coded planes untouched and at full size; for an
RGB-coded stream those planes are R, G and B, exactly what libjpeg gives with the Adobe marker.

Only the few nvjpeg calls needed for batched decoding are bound. The library is the one that ships
with torchvision's CUDA wheels (or the nvidia-nvjpeg wheel, or the system's); without it this path
is simply unavailable and the caller uses another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from collections.abc import Iterator

import torch

BACKENDS = {"default": 0, "hybrid": 1, "gpu_hybrid": 2, "hardware": 3}
OUTPUTS = {"unchanged": 0, "yuv": 1}
STATUS_ARCH_MISMATCH = 7
MAX_COMPONENTS = 4


class NvjpegError(RuntimeError):
    """An nvjpeg call failed; the message names the call and its status code."""


class _Image(ctypes.Structure):
    _fields_ = [
        ("channel", ctypes.c_void_p * MAX_COMPONENTS),
        ("pitch", ctypes.c_size_t * MAX_COMPONENTS),
    ]


def _candidate_paths() -> Iterator[str]:
    try:
        import torchvision

        root = os.path.dirname(os.path.dirname(torchvision.__file__))
        yield from sorted(glob.glob(os.path.join(root, "torchvision.libs", "libnvjpeg*.so*")))
        yield from sorted(glob.glob(os.path.join(root, "torchvision", "libnvjpeg*.so*")))
    except ImportError:
        pass
    import site

    for root in site.getsitepackages() + [site.getusersitepackages()]:
        yield from sorted(glob.glob(os.path.join(root, "nvidia", "nvjpeg", "lib", "libnvjpeg.so*")))
    found = ctypes.util.find_library("nvjpeg")
    if found:
        yield found


def load_library() -> tuple[ctypes.CDLL | None, str]:
    """(the nvjpeg library, "") or (None, why it could not be loaded)."""
    tried = []
    for path in _candidate_paths():
        try:
            return ctypes.CDLL(path), ""
        except OSError as error:
            tried.append(f"{path}: {error}")
    return None, "no loadable libnvjpeg found" + (f" ({'; '.join(tried)})" if tried else "")


class RawNvjpeg:
    """Batched nvjpeg decoding of full-resolution, 3-component streams into their coded planes.

    One instance per decoding thread (an nvjpeg state is not shared between threads).
    """

    def __init__(
        self, device: torch.device, backend: str = "hardware", output: str = "yuv"
    ) -> None:
        lib, why = load_library()
        if lib is None:
            raise NvjpegError(why)
        self._lib = lib
        self.device = torch.device(device)
        self.output = OUTPUTS[output]
        self._handle = ctypes.c_void_p()
        self._state = ctypes.c_void_p()
        self._batch = 0
        with torch.cuda.device(self.device):
            torch.cuda.current_stream(self.device)  # makes sure the CUDA context exists
            status = lib.nvjpegCreateEx(
                BACKENDS[backend], None, None, 0, ctypes.byref(self._handle)
            )
            if status == STATUS_ARCH_MISMATCH and backend == "hardware":
                backend = "default"
                status = lib.nvjpegCreateEx(0, None, None, 0, ctypes.byref(self._handle))
            self._check(status, "nvjpegCreateEx")
            self._check(
                lib.nvjpegJpegStateCreate(self._handle, ctypes.byref(self._state)),
                "nvjpegJpegStateCreate",
            )
        self.backend = backend

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != 0:
            raise NvjpegError(f"{call} failed with nvjpeg status {status}")

    def _size(self, stream: bytes) -> tuple[int, int]:
        """(height, width) of a stream whose three components are all full size."""
        components = ctypes.c_int()
        subsampling = ctypes.c_int()
        widths = (ctypes.c_int * MAX_COMPONENTS)()
        heights = (ctypes.c_int * MAX_COMPONENTS)()
        self._check(
            self._lib.nvjpegGetImageInfo(
                self._handle,
                stream,
                ctypes.c_size_t(len(stream)),
                ctypes.byref(components),
                ctypes.byref(subsampling),
                widths,
                heights,
            ),
            "nvjpegGetImageInfo",
        )
        if components.value != 3 or len({widths[c] for c in range(3)}) != 1:
            raise NvjpegError(
                f"stream has {components.value} components of widths "
                f"{[widths[c] for c in range(components.value)]}: only 3 full-size planes decode "
                "raw"
            )
        return heights[0], widths[0]

    def decode(self, streams: list[bytes]) -> torch.Tensor | list[torch.Tensor]:
        """Each non-empty stream's planes, uint8 on the device: one (U, 3, h, w) tensor when all
        streams have the same size, else a list of (3, h_i, w_i) tensors."""
        sizes = [self._size(s) for s in streams]
        if len(set(sizes)) == 1:
            block = torch.empty((len(streams), 3, *sizes[0]), dtype=torch.uint8, device=self.device)
            planes: torch.Tensor | list[torch.Tensor] = block
        else:
            planes = [
                torch.empty((3, h, w), dtype=torch.uint8, device=self.device) for h, w in sizes
            ]
        images = (_Image * len(streams))()
        for i, plane in enumerate(planes):
            for c in range(3):
                images[i].channel[c] = plane[c].data_ptr()
                images[i].pitch[c] = plane.shape[2]
        data = (ctypes.c_char_p * len(streams))(*streams)
        lengths = (ctypes.c_size_t * len(streams))(*[len(s) for s in streams])
        cuda_stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
        if self._batch != len(streams):
            self._check(
                self._lib.nvjpegDecodeBatchedInitialize(
                    self._handle, self._state, len(streams), 1, self.output
                ),
                "nvjpegDecodeBatchedInitialize",
            )
            self._batch = len(streams)
        self._check(
            self._lib.nvjpegDecodeBatched(
                self._handle, self._state, data, lengths, images, cuda_stream
            ),
            "nvjpegDecodeBatched",
        )
        # The host buffers above must outlive nvjpeg's use of them.
        torch.cuda.current_stream(self.device).synchronize()
        return planes
