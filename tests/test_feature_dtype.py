"""Features stored as float16 (extract.feature_dtype): the values are float32's rounded, the file
is about half the size, and every reader gets float32 back."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from hnm.cli import main
from hnm.core.errors import ConfigError, HnmError
from hnm.encoders import build_encoder, save_encoder_file
from hnm.evaluate.probe import read_rows
from hnm.extract.settings import ExtractSettings
from hnm.extract.stage import extract_slide
from hnm.io.h5io import (
    FeatureWriter,
    chunk_rows,
    files_by_slide,
    read_feature_attrs,
    read_features,
    write_tiles,
)
from hnm.mil.data import load_cohort
from tests.test_workflow_static import snakemake

SLIDE = "cmu-1-small-region.svs"
PATCHES = 400
# float16 keeps 11 significant bits: rounding to nearest moves a value in its normal range
# (|x| >= 2^-14) by at most half a unit in the last place, 2^-11 of the value; below that range
# (subnormals) the spacing is fixed at 2^-24, so the error is at most 2^-25 absolute.
FLOAT16_RELATIVE = 2.0**-11
FLOAT16_NORMAL_MIN = 2.0**-14
FLOAT16_SUBNORMAL_ABS = 2.0**-25


@pytest.fixture(scope="module")
def both_dtypes(test_slides: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One slide's features extracted twice, float32 and float16, with the same encoder."""
    root = tmp_path_factory.mktemp("dtype")
    slide = str(test_slides / SLIDE)
    rng = np.random.default_rng(1)
    coords = np.stack([rng.integers(0, 2000, PATCHES), rng.integers(0, 2800, PATCHES)], 1)
    tiles = root / "tiles.h5"
    write_tiles(
        tiles,
        coords,
        {
            "slide_id": "cmu1",
            "slide_path": slide,
            "patch_size": 32,
            "target_mpp": 0.998,
            "mpp": 0.499,
            "mpp_source": "metadata",
            "level": 0,
            "level_downsample": 1.0,
            "read_size": 64,
            "step_level0": 64,
            "failed": False,
            "error": "",
        },
    )
    encoder = root / "encoder.pt"
    save_encoder_file(
        encoder, build_encoder("resnet_mini", {"norm": "batch"}, seed=5), source="random:5"
    )
    out = {dtype: root / f"{dtype}.h5" for dtype in ("float32", "float16")}
    extract_slide(
        slide,
        "cmu1",
        str(tiles),
        str(encoder),
        0,
        str(out["float32"]),
        ExtractSettings(batch_size=64, workers=0, device="cpu"),
    )
    # float16 through the command, with the flag the workflow passes (rules/extract.smk).
    assert main(["extract", "--slide", slide, "--slide-id", "cmu1", "--tiles", str(tiles),
                 "--encoder", str(encoder), "--round", "0", "--device", "cpu", "--batch-size",
                 "64", "--workers", "0", "--feature-dtype", "float16",
                 "--out", str(out["float16"])]) == 0  # fmt: skip
    return out


def test_float16_features_are_the_float32_ones_rounded(both_dtypes: dict[str, Path]) -> None:
    full, _, full_attrs = read_features(both_dtypes["float32"])
    half, half_coords, half_attrs = read_features(both_dtypes["float16"])
    assert full.dtype == np.float32 and half.dtype == np.float32  # what every reader gets
    assert full.shape == half.shape == (PATCHES, 128)
    assert full_attrs["dtype"] == "float32" and half_attrs["dtype"] == "float16"
    with h5py.File(both_dtypes["float16"], "r") as handle:
        assert handle["features"].dtype == np.float16  # stored as HDF5's own half type
    # Extraction on the CPU is deterministic, so the float16 file is float32's, rounded once.
    assert np.array_equal(half, full.astype(np.float16).astype(np.float32))
    error = np.abs(half - full)
    normal = np.abs(full) >= FLOAT16_NORMAL_MIN
    relative = error[normal] / np.abs(full[normal])
    print(
        f"float16 vs float32: max relative error {relative.max():.3e} "
        f"(bound 2^-11 = {FLOAT16_RELATIVE:.3e}) over {normal.sum()} values in float16's normal "
        f"range; max absolute error below it {error[~normal].max(initial=0.0):.3e}"
    )
    assert relative.max() <= FLOAT16_RELATIVE
    assert error[~normal].max(initial=0.0) <= FLOAT16_SUBNORMAL_ABS
    # Not vacuous: the rounding did move values, by about the bound.
    assert relative.max() > FLOAT16_RELATIVE / 2
    assert np.array_equal(half_coords, read_features(both_dtypes["float32"])[1])


def test_a_float16_file_is_about_half_the_size(both_dtypes: dict[str, Path]) -> None:
    sizes = {dtype: path.stat().st_size for dtype, path in both_dtypes.items()}
    stored = {}
    for dtype, path in both_dtypes.items():
        with h5py.File(path, "r") as handle:
            stored[dtype] = handle["features"].id.get_storage_size()
    assert stored["float32"] == PATCHES * 128 * 4 and stored["float16"] == PATCHES * 128 * 2
    ratio = sizes["float16"] / sizes["float32"]
    print(f"file sizes {sizes}: float16/float32 = {ratio:.3f}")
    # The features halve; the coordinates (16 bytes a patch) and attributes do not.
    assert 0.5 < ratio < 0.56


def test_every_reader_gets_float32(tmp_path: Path) -> None:
    values = np.array([[0.1, 1.0, 3.14159, 1000.123], [2.0**-20, -7.5, 65000.0, 0.0]], np.float32)
    rounded = values.astype(np.float16).astype(np.float32)
    paths = {}
    for slide_id in ("a", "b"):
        paths[slide_id] = tmp_path / f"{slide_id}.h5"
        with FeatureWriter(
            paths[slide_id], 4, np.zeros((2, 2)), {"slide_id": slide_id}, dtype="float16"
        ) as writer:
            writer.append(values)
    features, _, _ = read_features(paths["a"])
    assert features.dtype == np.float32 and np.array_equal(features, rounded)
    assert read_feature_attrs(paths["a"])["dtype"] == "float16"
    # MIL training, mining's scores and predict load bags through load_cohort.
    sheet = pd.DataFrame({"slide_id": ["a", "b"], "split": ["train", "train"], "label": [1, 0]})
    cohort = load_cohort(sheet, files_by_slide(paths.values(), "features"), torch.device("cpu"))
    assert cohort.features.dtype == torch.float32
    assert np.array_equal(cohort.features.numpy(), np.concatenate([rounded, rounded]))
    # The linear probe reads rows through the same path, widened to float64.
    probe_rows = read_rows(paths["b"])
    assert probe_rows.dtype == np.float64 and np.array_equal(probe_rows, rounded)


def test_a_value_beyond_float16_stops_the_job_naming_the_file_and_setting(tmp_path: Path) -> None:
    out = tmp_path / "big.h5"
    with pytest.raises(HnmError, match=r"big\.h5.*70000.*float16.*extract\.feature_dtype: float32"):
        with FeatureWriter(out, 2, np.zeros((1, 2)), {}, dtype="float16") as writer:
            writer.append(np.array([[1.0, 70000.0]], np.float32))
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written left


def test_only_float32_and_float16_are_offered(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="feature_dtype 'bfloat16' is not one of float32, float16"
    ):
        ExtractSettings(feature_dtype="bfloat16")
    with pytest.raises(HnmError, match=r"x\.h5: dtype 'float64'.*extract\.feature_dtype"):
        FeatureWriter(tmp_path / "x.h5", 2, np.zeros((1, 2)), {}, dtype="float64")


def test_chunks_split_the_rows_evenly(tmp_path: Path) -> None:
    assert [chunk_rows(n) for n in (0, 1, 4096, 4097, 7500, 12289)] == [
        1,
        1,
        4096,
        2049,
        3750,
        3073,
    ]
    # No nearly empty last chunk: a 7,500-row file stores 7,500 rows, not two 4,096-row chunks.
    out = tmp_path / "f.h5"
    with FeatureWriter(out, 8, np.zeros((7500, 2)), {}, dtype="float16") as writer:
        writer.append(np.ones((7500, 8), np.float32))
    with h5py.File(out, "r") as handle:
        assert handle["features"].id.get_storage_size() == 7500 * 8 * 2


def test_the_extraction_command_names_the_dtype_only_when_it_is_not_float32(
    tmp_path: Path,
) -> None:
    """The command is a rerun trigger: at the default it stays as runs begun before the setting
    had it, and float16 reaches every extraction job."""
    plans = {}
    for dtype in ("float32", "float16"):
        workdir = tmp_path / dtype
        workdir.mkdir()
        result = snakemake(workdir, "-n", "-p", "--config", f"extract={{feature_dtype: {dtype}}}")
        assert result.returncode == 0, result.stderr[-3000:]
        plans[dtype] = [
            line for line in result.stdout.splitlines() if "python -m hnm extract " in line
        ]
    assert plans["float32"] and not any("--feature-dtype" in line for line in plans["float32"])
    assert len(plans["float16"]) == len(plans["float32"])
    assert all("--feature-dtype float16" in line for line in plans["float16"])
