"""Batch files: one tiles file and one features file per job of several slides, a group per slide.

What a batch job writes must be what one job per slide writes, slide for slide; a failed slide
must not leave a batch file that looks finished; and every reader must find a slide in either
layout by its id."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
from PIL import Image

from hnm.cli import main
from hnm.core.errors import HnmError
from hnm.encoders import build_encoder, save_encoder_file
from hnm.io.h5io import (
    BATCH_LAYOUT,
    batch_file,
    files_by_slide,
    files_in_folder,
    open_slide,
    read_features,
    read_tiles,
    slide_file,
    write_tiles,
)

SMALL_TILES = ["--patch-size", "16", "--target-mpp", "2.0", "--tissue-mpp", "2"]
SMALL_TILES += ["--min-tissue-area-um2", "500", "--closing-um", "0", "--median-um", "0"]


def _tile(slides, ids, outs, qcs, *extra) -> int:
    return main(
        [
            "tile",
            "--slide",
            *map(str, slides),
            "--slide-id",
            *ids,
            "--out",
            *map(str, outs),
            "--qc",
            *map(str, qcs),
            *SMALL_TILES,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def tiled(test_slides, tmp_path_factory):
    """Two real slides tiled one per file and into one batch file (boxes.tiff at --mpp 0.5)."""
    root = tmp_path_factory.mktemp("batch")
    slides = [test_slides / "cmu-1-small-region.svs", test_slides / "boxes.tiff"]
    ids = ["cmu1", "boxes"]
    one = root / "one"
    outs = [one / f"{slide_id}.h5" for slide_id in ids]
    qcs = [one / f"{slide_id}.png" for slide_id in ids]
    assert _tile(slides, ids, outs, qcs, "--mpp", "metadata", "0.5") == 0
    batch = root / "batches" / "b01.h5"
    qc = root / "qc" / "b01.png"
    assert _tile(slides, ids, [batch], [qc], "--batch", "--mpp", "metadata", "0.5") == 0
    return root, slides, ids, one, batch, qc


def test_a_batch_tiles_file_holds_each_slide_as_its_own_file_does(tiled) -> None:
    _, _, ids, one, batch, qc = tiled
    with h5py.File(batch, "r") as handle:
        assert handle.attrs["layout"] == BATCH_LAYOUT
        assert sorted(handle) == sorted(ids)
    found = files_by_slide([batch], "tiles")
    assert sorted(found) == sorted(ids)
    for slide_id in ids:
        alone, alone_attrs = read_tiles(one / f"{slide_id}.h5")
        grouped, grouped_attrs = read_tiles(slide_file(found, slide_id, "tiles"))
        assert len(alone) and np.array_equal(alone, grouped)
        drop = {"timings"}
        assert {k: v for k, v in alone_attrs.items() if k not in drop} == {
            k: v for k, v in grouped_attrs.items() if k not in drop
        }
        with open_slide(found[slide_id]) as group, h5py.File(one / f"{slide_id}.h5") as own:
            np.testing.assert_array_equal(group["tissue_fraction"][:], own["tissue_fraction"][:])
    # the stacked QC PNG: each slide's picture, one under the other, 24 px apart
    pictures = []
    for slide_id in ids:
        with open_slide(found[slide_id]) as group:
            pictures.append(Image.open(io.BytesIO(group["qc_png"][:].tobytes())).convert("RGB"))
        with Image.open(one / f"{slide_id}.png") as own:
            assert pictures[-1].size == own.size
    with Image.open(qc) as stacked:
        assert stacked.height == sum(p.height for p in pictures) + 24
        assert stacked.width == max(p.width for p in pictures)
        top = np.asarray(stacked.convert("RGB"))[: pictures[0].height, : pictures[0].width]
        np.testing.assert_array_equal(top, np.asarray(pictures[0]))


def test_batch_features_equal_one_file_per_slide(tiled) -> None:
    root, slides, ids, one, batch, _ = tiled
    encoder = root / "encoder.pt"
    save_encoder_file(encoder, build_encoder("resnet_mini", {}, seed=1), source="random:1")
    common = ["--encoder", str(encoder), "--round", "0", "--device", "cpu", "--threads", "1"]
    alone = [root / "alone" / f"{slide_id}.h5" for slide_id in ids]
    assert (
        main(
            [
                "extract",
                "--slide",
                *map(str, slides),
                "--slide-id",
                *ids,
                "--tiles",
                *(str(one / f"{slide_id}.h5") for slide_id in ids),
                "--out",
                *map(str, alone),
                *common,
            ]
        )
        == 0
    )
    together = root / "features" / "batches" / "b01.h5"
    # the slides named in reverse order: each is found in the batch tiles file by its id
    code = main(
        [
            "extract",
            "--slide",
            *map(str, slides[::-1]),
            "--slide-id",
            *ids[::-1],
            "--tiles",
            str(batch),
            "--batch",
            "--out",
            str(together),
            *common,
        ]
    )
    assert code == 0
    found = files_by_slide([together], "features")
    assert sorted(found) == sorted(ids)
    for slide_id, path in zip(ids, alone):
        expected, expected_coords, expected_attrs = read_features(path)
        features, coords, attrs = read_features(found[slide_id])
        assert len(expected)
        np.testing.assert_array_equal(features, expected)
        np.testing.assert_array_equal(coords, expected_coords)
        assert attrs["slide_id"] == slide_id
        assert attrs["tiles_file"] == str(batch)
        assert expected_attrs["tiles_file"] == str(one / f"{slide_id}.h5")
    # a finished run's folder, read afterwards (hnm compare): its batches/ folder is read too, and
    # a slide found twice (per-slide files left from a run before batching) is named, not guessed
    assert sorted(files_in_folder(together.parent.parent, "features")) == sorted(ids)
    alone[1].rename(together.parent.parent / alone[1].name)
    with pytest.raises(HnmError, match=r"two features files for slide 'boxes'"):
        files_in_folder(together.parent.parent, "features")


def test_a_failing_slide_leaves_no_batch_file(test_slides, tmp_path, capsys) -> None:
    slides = [test_slides / "cmu-1-small-region.svs", test_slides / "unopenable.tiff"]
    batch, qc = tmp_path / "b.h5", tmp_path / "b.png"
    assert _tile(slides, ["cmu1", "bad"], [batch], [qc], "--batch") == 2
    assert "bad" in capsys.readouterr().err
    assert not batch.exists() and not qc.exists()
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    # skipped on request: the batch is written, the bad slide in it marked failed
    assert _tile(slides, ["cmu1", "bad"], [batch], [qc], "--batch", "--on-slide-error", "skip") == 0
    found = files_by_slide([batch], "tiles")
    assert read_tiles(found["bad"])[1]["failed"] is True
    assert len(read_tiles(found["cmu1"])[0]) > 0


def test_a_group_written_in_error_is_removed(tmp_path) -> None:
    attrs = {"slide_id": "a", "failed": False}
    with batch_file(tmp_path / "b.h5") as batch:
        write_tiles(batch.slide("a"), np.zeros((3, 2)), attrs)
        with pytest.raises(TypeError):
            write_tiles(batch.slide("b"), np.zeros((3, 2)), {"bad": object()})
    assert sorted(files_by_slide([tmp_path / "b.h5"], "tiles")) == ["a"]


def test_a_slide_in_two_files_and_a_missing_file_are_named(tmp_path) -> None:
    with batch_file(tmp_path / "b0.h5") as batch:
        write_tiles(batch.slide("a"), np.zeros((1, 2)), {})
        write_tiles(batch.slide("b"), np.zeros((1, 2)), {})
    write_tiles(tmp_path / "a.h5", np.zeros((1, 2)), {})
    with pytest.raises(HnmError, match=r"two tiles files for slide 'a'"):
        files_by_slide([tmp_path / "b0.h5", tmp_path / "a.h5"], "tiles")
    found = files_by_slide([tmp_path / "b0.h5", tmp_path / "gone.h5"], "tiles")
    with pytest.raises(HnmError, match=r"slide 'gone': tiles file .*gone.h5 is missing"):
        slide_file(found, "gone", "tiles")
    with pytest.raises(HnmError, match=r"slide 'c': no tiles file was passed"):
        slide_file(found, "c", "tiles")
    (tmp_path / "junk.h5").write_text("not HDF5")
    with pytest.raises(HnmError, match=r"junk.h5 cannot be read as HDF5"):
        files_by_slide([tmp_path / "junk.h5"], "tiles")
