"""The two per-slide HDF5 files every stage exchanges: tiles and features.

Layout follows CLAM (`coords` (N, 2) level-0 pixel x/y, `features` (N, D)) so files interchange with
CLAM/TRIDENT tools, and adds attributes those tools lose (true mpp, read level and size, encoder,
weights checksum). A slide that failed and was skipped still gets files, marked `failed` with the
reason, so downstream stages can exclude it without the workflow breaking. Features are stored as
float32 or float16 (extract.feature_dtype, recorded in the `dtype` attribute) and always read back
as float32 (`read_feature_rows`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from hnm import __version__
from hnm.core.atomic import atomic_path
from hnm.core.errors import HnmError
from hnm.core.settings import FEATURE_DTYPES


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if value is None:
        return "null"
    return value


def _decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and value[:1] in "[{" or value == "null":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        decoded[key] = value
    return decoded


def write_tiles(path: str | os.PathLike[str], coords: np.ndarray, attrs: dict[str, Any]) -> None:
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        handle.create_dataset("coords", data=coords, maxshape=(None, 2))
        for key, value in {**attrs, "code_version": __version__}.items():
            handle["coords"].attrs[key] = _encode_attr(value)


def level0_tiles_attrs(
    slide_id: str, slide_path: str | os.PathLike[str], patch: int, error: str = ""
) -> dict[str, Any]:
    """Tiles attributes of patches read at level 0 of a slide taken as 1 um/px (its sheet's mpp),
    as benchmarks and tests write them for slides they made; `error` marks a failed slide."""
    return {
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "patch_size": patch,
        "target_mpp": 1.0,
        "mpp": 1.0,
        "mpp_source": "sheet",
        "level": 0,
        "level_downsample": 1.0,
        "read_size": patch,
        "step_level0": patch,
        "failed": bool(error),
        "error": error,
    }


def read_tiles(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    with h5py.File(path, "r") as handle:
        return handle["coords"][:].astype(np.int64), _decode_attrs(handle["coords"].attrs)


def read_tiles_or_fail(
    path: str | os.PathLike[str], remedy: str = "re-run tiling"
) -> tuple[np.ndarray, dict[str, Any]]:
    """`read_tiles` for stages that need the file: a missing, truncated or foreign file becomes an
    HnmError naming it and what to do, instead of h5py's OSError or KeyError."""
    try:
        return read_tiles(path)
    except (OSError, KeyError) as error:
        raise HnmError(
            f"tiles file {os.fspath(path)} cannot be read ({error}); {remedy}"
        ) from error


# HDF5 chunks of at most this many feature rows. A chunked dataset's last chunk takes a whole
# chunk's space on disk even when it is nearly empty, so rows are split into equal chunks instead
# (7,500 rows: two chunks of 3,750, not 4,096 + a 4,096-row chunk holding 3,404, 9% more disk).
MAX_CHUNK_ROWS = 4096


def chunk_rows(total: int) -> int:
    """Rows per chunk: the fewest chunks of at most MAX_CHUNK_ROWS rows, as equal as can be."""
    chunks = -(-total // MAX_CHUNK_ROWS)
    return max(1, -(-total // max(1, chunks)))


class FeatureWriter(AbstractContextManager["FeatureWriter"]):
    """Appends feature rows in chunks so a million-patch slide never sits in memory whole.

    `dtype` is how the rows are stored (FEATURE_DTYPES); rows arrive as float32 and are rounded
    here, once, by numpy (round to nearest even), so a float16 file holds exactly the float32
    values rounded, whatever HDF5 library converts."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        dim: int,
        coords: np.ndarray,
        attrs: dict[str, Any],
        dtype: str = "float32",
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.attrs = attrs
        if dtype not in FEATURE_DTYPES:
            raise HnmError(
                f"features file {self.path}: dtype '{dtype}' is not one of "
                f"{', '.join(FEATURE_DTYPES)} (setting extract.feature_dtype)"
            )
        self.dtype = dtype
        self.written = 0
        self._atomic = atomic_path(self.path)
        self._handle: h5py.File | None = None

    def __enter__(self) -> "FeatureWriter":
        temporary = self._atomic.__enter__()
        self._handle = h5py.File(temporary, "w")
        total = len(self.coords)
        self._features = self._handle.create_dataset(
            "features",
            shape=(total, self.dim),
            dtype=self.dtype,
            chunks=(chunk_rows(total), self.dim) if total else None,
        )
        self._handle.create_dataset("coords", data=self.coords)
        # The file says how it stores its features, beside HDF5's own type of the dataset.
        attrs = {**self.attrs, "dtype": self.dtype, "code_version": __version__}
        for key, value in attrs.items():
            self._features.attrs[key] = _encode_attr(value)
        return self

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Attributes known only at the end (e.g. throughput), written before the rename."""
        for key, value in attrs.items():
            self._features.attrs[key] = _encode_attr(value)

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        with np.errstate(over="ignore"):  # an overflow is reported below, naming the file
            stored = rows.astype(self.dtype, copy=False)
        if stored.dtype != rows.dtype:
            # float16 tops out at 65504: a larger value would be stored as inf, silently.
            overflow = np.isinf(stored) & np.isfinite(rows)
            if overflow.any():
                raise HnmError(
                    f"features file {self.path}: a feature value of magnitude "
                    f"{float(np.abs(rows[overflow]).max()):.6g} does not fit {self.dtype} "
                    f"(largest {float(np.finfo(self.dtype).max):.6g}); set "
                    "extract.feature_dtype: float32"
                )
        self._features[self.written : self.written + len(rows)] = stored
        self.written += len(rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._handle is not None
        if exc_type is None and self.written != len(self.coords):
            exc = RuntimeError(
                f"{self.path}: wrote {self.written} feature rows for {len(self.coords)} patches"
            )
            exc_type = RuntimeError
        self._handle.close()
        if exc is not None and exc_type is not None:
            self._atomic.__exit__(exc_type, exc, traceback)
            raise exc
        self._atomic.__exit__(None, None, None)


def read_feature_rows(dataset: h5py.Dataset) -> np.ndarray:
    """A features dataset's rows as float32, however the file stores them (extract.feature_dtype):
    every stage computes in float32, so a float16 file changes the disk, not the arithmetic."""
    return np.asarray(dataset[:], dtype=np.float32)


def read_features(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features (N, D) float32, coords (N, 2), attrs)."""
    with h5py.File(path, "r") as handle:
        return (
            read_feature_rows(handle["features"]),
            handle["coords"][:].astype(np.int64),
            _decode_attrs(handle["features"].attrs),
        )


def read_feature_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    with h5py.File(path, "r") as handle:
        return _decode_attrs(handle["features"].attrs)


def files_by_slide(paths: Iterable[str | os.PathLike[str]], what: str) -> dict[str, Path]:
    """{slide_id: path} for per-slide files named `<slide_id>.h5`, as the workflow passes them.

    Stages receive the exact files of their job (never a folder to search), so a slide's file
    that is missing here is a missing input, not a slide to skip quietly."""
    mapping: dict[str, Path] = {}
    for path in map(Path, paths):
        slide_id = path.name[: -len(".h5")] if path.name.endswith(".h5") else path.stem
        if slide_id in mapping:
            raise HnmError(
                f"two {what} files for slide '{slide_id}': {mapping[slide_id]} and {path}"
            )
        mapping[slide_id] = path
    return mapping


def slide_file(files: dict[str, Path], slide_id: str, what: str) -> Path:
    """The slide's file from `files_by_slide`, or an error naming the slide and what to pass."""
    if slide_id not in files:
        raise HnmError(
            f"slide '{slide_id}': no {what} file was passed to this stage (the sheet names the "
            f"slide, so its {what} file must be among the inputs)"
        )
    if not files[slide_id].exists():
        raise HnmError(
            f"slide '{slide_id}': {what} file {files[slide_id]} is missing; run the stage that "
            "writes it first"
        )
    return files[slide_id]
