"""Reading and writing safetensors files without the `safetensors` package.

Foundation-model weights are often published as model.safetensors. The format is small enough to
read directly (an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw little-endian bytes), which spares an optional dependency and
reads a file of gigabytes once: every tensor is a view into the one buffer read from disk.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from hnm.core.atomic import atomic_path
from hnm.core.errors import CheckpointError

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
# A header larger than this is not a weights file's (safetensors itself refuses over 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the file, on the CPU; a malformed file is a CheckpointError naming it."""
    path = Path(path)
    data = bytearray(path.read_bytes())

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} cannot be read as safetensors ({why})")

    if len(data) < 8:
        raise bad(f"{len(data)} bytes, shorter than the 8-byte header length")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise bad(f"header length {size} does not fit a file of {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad(f"header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise bad("header is not a mapping of tensor names")
    start = 8 + size
    view = memoryview(data)
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(n) for n in entry["shape"]]
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise bad(f"tensor {name}: unreadable entry {entry} ({error})") from error
        count = 1
        for n in shape:
            count *= n
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if end - begin != count * itemsize or start + end > len(data) or begin < 0:
            raise bad(f"tensor {name}: bytes {begin}-{end} do not hold {shape} {entry['dtype']}")
        offset = start + begin
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif offset % itemsize == 0:
            tensors[name] = torch.frombuffer(view, dtype=dtype, count=count, offset=offset)
            tensors[name] = tensors[name].reshape(shape)
        else:  # unaligned: copy this one tensor
            chunk = bytearray(view[offset : offset + count * itemsize])
            tensors[name] = torch.frombuffer(chunk, dtype=dtype).reshape(shape)
    return tensors


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `tensors` (contiguous copies on the CPU) as a safetensors file, atomically."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        if tensor.dtype not in _NAMES:
            raise ValueError(f"safetensors cannot hold {name} of dtype {tensor.dtype}")
        blob = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for blob in blobs:
            handle.write(blob)
