"""The two HDF5 files every stage exchanges per slide: tiles and features.

A slide's datasets sit at the root of a file of its own (`<slide_id>.h5`, one job per slide) or in
a group named by its id inside a batch file holding every slide of a job (root attribute
`layout: slides`). A batch file is one workflow output for many slides, which keeps the number of
files Snakemake has to plan for at ten thousand slides in the thousands rather than the hundreds of
thousands. Stages do not care which: `files_by_slide` maps each slide to a `SlideData` (file and
group), and `open_slide` opens it.

Layout follows CLAM (`coords` (N, 2) level-0 pixel x/y, `features` (N, D)) so files interchange with
CLAM/TRIDENT tools, and adds attributes those tools lose (true mpp, read level and size, encoder,
weights checksum). A slide that failed and was skipped still gets files, marked `failed` with the
reason, so downstream stages can exclude it without the workflow breaking. Features are stored as
float32 or float16 (extract.feature_dtype, recorded in the `dtype` attribute) and always read back
as float32 (`read_feature_rows`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
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


# The root attribute `layout` of a batch file: one group per slide, named by its id.
BATCH_LAYOUT = "slides"
# Where the workflow puts batch files: under the per-slide files' folder (results/tiles/batches/).
BATCH_FOLDER = "batches"


@dataclass(frozen=True)
class SlideData:
    """Where one slide's datasets are: the root of its own file (group "") or a batch file's group."""

    path: Path
    slide_id: str
    group: str = ""

    def __str__(self) -> str:
        return str(self.path) if not self.group else f"{self.path} (slide {self.group})"

    def exists(self) -> bool:
        return self.path.exists()

    def stat(self) -> os.stat_result:
        """The file's: a batch file changes as a whole."""
        return self.path.stat()


PathOrSlide = str | os.PathLike[str] | SlideData


def as_slide_data(where: PathOrSlide) -> SlideData:
    """A plain path is a per-slide file: its name is the slide's id."""
    if isinstance(where, SlideData):
        return where
    path = Path(where)
    return SlideData(path, path.name[: -len(".h5")] if path.name.endswith(".h5") else path.stem)


@contextlib.contextmanager
def open_slide(where: PathOrSlide) -> Iterator[h5py.Group]:
    """The slide's datasets, read-only: a file's root or its group in a batch file."""
    where = as_slide_data(where)
    with h5py.File(where.path, "r") as handle:
        yield handle[where.group] if where.group else handle


@dataclass(frozen=True)
class BatchFile:
    """A batch file being written (`batch_file`): slides go in one group each (`slide`)."""

    path: Path
    handle: h5py.File

    def slide(self, slide_id: str) -> "SlideTarget":
        return SlideTarget(self.path, slide_id, self)


@contextlib.contextmanager
def batch_file(path: str | os.PathLike[str]) -> Iterator[BatchFile]:
    """A batch file to write slides into, renamed into place only when the block ends without an
    error, every slide of the job in, so a killed job leaves no batch file that looks finished."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        handle.attrs["layout"] = BATCH_LAYOUT
        yield BatchFile(Path(path), handle)


@dataclass(frozen=True)
class SlideTarget:
    """Where a stage writes one slide: a file of its own (`batch` None) or a group of a batch file."""

    path: Path
    slide_id: str
    batch: BatchFile | None = None

    def __str__(self) -> str:
        return str(self.path) if self.batch is None else f"{self.path} (slide {self.slide_id})"


OutPath = str | os.PathLike[str] | SlideTarget


def as_slide_target(out: OutPath) -> SlideTarget:
    if isinstance(out, SlideTarget):
        return out
    return SlideTarget(Path(out), as_slide_data(out).slide_id)


@contextlib.contextmanager
def slide_output(out: OutPath) -> Iterator[h5py.Group]:
    """A group to write one slide's datasets into; they count only if the block ends without an
    error: a file of its own is renamed into place then, a batch file's group is removed if not."""
    target = as_slide_target(out)
    if target.batch is None:
        with atomic_path(target.path) as temporary, h5py.File(temporary, "w") as handle:
            yield handle
        return
    handle = target.batch.handle
    if target.slide_id in handle:  # an earlier try of this slide in the same job
        del handle[target.slide_id]
    group = handle.create_group(target.slide_id)
    try:
        yield group
    except BaseException:
        del handle[target.slide_id]
        raise


def write_tiles(
    out: OutPath,
    coords: np.ndarray,
    attrs: dict[str, Any],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """The tiles datasets of one slide; `extra` adds datasets beside `coords` (tissue_fraction)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with slide_output(out) as handle:
        handle.create_dataset("coords", data=coords, maxshape=(None, 2))
        for key, value in {**attrs, "code_version": __version__}.items():
            handle["coords"].attrs[key] = _encode_attr(value)
        for name, data in (extra or {}).items():
            handle.create_dataset(name, data=data)


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


def read_tiles(path: PathOrSlide) -> tuple[np.ndarray, dict[str, Any]]:
    with open_slide(path) as handle:
        return handle["coords"][:].astype(np.int64), _decode_attrs(handle["coords"].attrs)


def read_tiles_or_fail(
    path: PathOrSlide, remedy: str = "re-run tiling"
) -> tuple[np.ndarray, dict[str, Any]]:
    """`read_tiles` for stages that need the file: a missing, truncated or foreign file becomes an
    HnmError naming it and what to do, instead of h5py's OSError or KeyError."""
    try:
        return read_tiles(path)
    except (OSError, KeyError) as error:
        raise HnmError(f"tiles file {path} cannot be read ({error}); {remedy}") from error


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
        path: OutPath,
        dim: int,
        coords: np.ndarray,
        attrs: dict[str, Any],
        dtype: str = "float32",
    ) -> None:
        # named in messages: the file, and the slide's group in a batch
        self.path = as_slide_target(path)
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
        self._output = slide_output(self.path)
        self._handle: h5py.Group | None = None

    def __enter__(self) -> "FeatureWriter":
        self._handle = self._output.__enter__()
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
        if exc is not None and exc_type is not None:
            # the context manager drops the unfinished file or group, and re-raises `exc`
            self._output.__exit__(exc_type, exc, traceback)
            raise exc
        self._output.__exit__(None, None, None)


def read_feature_rows(dataset: h5py.Dataset) -> np.ndarray:
    """A features dataset's rows as float32, however the file stores them (extract.feature_dtype):
    every stage computes in float32, so a float16 file changes the disk, not the arithmetic."""
    return np.asarray(dataset[:], dtype=np.float32)


def read_features(
    path: PathOrSlide,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features (N, D) float32, coords (N, 2), attrs)."""
    with open_slide(path) as handle:
        return (
            read_feature_rows(handle["features"]),
            handle["coords"][:].astype(np.int64),
            _decode_attrs(handle["features"].attrs),
        )


def read_feature_attrs(path: PathOrSlide) -> dict[str, Any]:
    with open_slide(path) as handle:
        return _decode_attrs(handle["features"].attrs)


def slides_in(path: str | os.PathLike[str]) -> list[SlideData]:
    """The slides a file holds: every group of a batch file, or the file itself, named by its id.

    A file that does not exist (yet) counts as a per-slide file: `slide_file` then says it is
    missing, naming the slide."""
    path = Path(path)
    if path.exists():
        try:
            with h5py.File(path, "r") as handle:
                if handle.attrs.get("layout") == BATCH_LAYOUT:
                    return [SlideData(path, name, name) for name in handle]
        except OSError as error:
            raise HnmError(
                f"{path} cannot be read as HDF5 ({error}); delete it and run the stage that "
                "writes it again"
            ) from error
    return [as_slide_data(path)]


def files_by_slide(paths: Iterable[str | os.PathLike[str]], what: str) -> dict[str, SlideData]:
    """{slide_id: SlideData} for the files the workflow passes: per-slide files named
    `<slide_id>.h5`, or batch files holding one group per slide.

    Stages receive the exact files of their job (never a folder to search), so a slide's file
    that is missing here is a missing input, not a slide to skip quietly. A batch file may hold
    slides the stage does not need (a batch mixes splits); stages look slides up by their sheet."""
    return slides_by_id((slide for path in paths for slide in slides_in(path)), what)


def slides_by_id(slides: Iterable[SlideData], what: str) -> dict[str, SlideData]:
    """{slide_id: SlideData}, refusing a slide found in two files."""
    mapping: dict[str, SlideData] = {}
    for slide in slides:
        if slide.slide_id in mapping:
            raise HnmError(
                f"two {what} files for slide '{slide.slide_id}': {mapping[slide.slide_id]} "
                f"and {slide}"
            )
        mapping[slide.slide_id] = slide
    return mapping


def slide_file(files: dict[str, SlideData], slide_id: str, what: str) -> SlideData:
    """The slide's file from `files_by_slide`, or an error naming the slide and what to pass."""
    if slide_id not in files:
        raise HnmError(
            f"slide '{slide_id}': no {what} file was passed to this stage (the sheet names the "
            f"slide, so its {what} file must be among the inputs)"
        )
    if not files[slide_id].exists():
        raise HnmError(
            f"slide '{slide_id}': {what} file {files[slide_id].path} is missing; run the stage "
            "that writes it first"
        )
    return files[slide_id]


def files_in_folder(folder: str | os.PathLike[str], what: str) -> dict[str, SlideData]:
    """{slide_id: SlideData} for a finished run's folder of tiles or one round's features: its
    per-slide files and the batch files of its `batches/` folder. For tools that read a run
    afterwards (hnm compare); stages get their files from the workflow instead."""
    folder = Path(folder)
    paths = [
        path
        for place in (folder, folder / BATCH_FOLDER)
        for path in sorted(place.glob("*.h5"))
        if not path.name.startswith(".")  # an unfinished write's temporary file
    ]
    return files_by_slide(paths, what)
