"""Patch reader and the extraction stage on a real SVS (CPU path)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from hnm.cli import main
from hnm.encoders import build_encoder, load_encoder_file, save_encoder_file
from hnm.extract.settings import ExtractSettings
from hnm.extract.stage import extract_slide
from hnm.io.h5io import read_feature_attrs, read_features, write_tiles
from hnm.io.patches import PatchReader
from hnm.io.slide import read_rgb

SLIDE = "cmu-1-small-region.svs"


def _attrs(slide: str, **over) -> dict:
    attrs = dict(
        slide_id="cmu1",
        slide_path=slide,
        patch_size=64,
        target_mpp=0.998,
        mpp=0.499,
        mpp_source="metadata",
        level=0,
        level_downsample=1.0,
        read_size=128,
        step_level0=128,
        failed=False,
        error="",
    )
    attrs.update(over)
    return attrs


def _coords() -> np.ndarray:
    # Not sorted, includes a patch hanging over the bottom-right edge, odd positions.
    rng = np.random.default_rng(0)
    coords = np.stack([rng.integers(0, 2100, 37), rng.integers(0, 2850, 37)], 1)
    coords[5] = (2220 - 60, 2967 - 30)
    return coords


@pytest.fixture(scope="module")
def setup(test_slides, tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    slide = str(test_slides / SLIDE)
    tiles = root / "tiles.h5"
    write_tiles(tiles, _coords(), _attrs(slide))
    encoder = root / "encoder.pt"
    save_encoder_file(
        encoder, build_encoder("resnet_mini", {"norm": "batch"}, seed=3), source="random:3"
    )
    return root, slide, tiles, encoder


def _independent_features(slide_path: str, coords: np.ndarray, encoder) -> np.ndarray:
    """openslide pixels -> Pillow bilinear 128 -> 64 -> (x/255 - mean)/std -> backbone, one by one."""
    import openslide

    model, meta = load_encoder_file(encoder)
    slide = openslide.OpenSlide(slide_path)
    mean = np.array(meta.mean, np.float32)
    std = np.array(meta.std, np.float32)
    rows = []
    for x, y in coords:
        rgb = read_rgb(slide, (int(x), int(y)), 0, (128, 128))
        small = np.asarray(Image.fromarray(rgb).resize((64, 64), Image.Resampling.BILINEAR))
        arr = (small.astype(np.float32) / 255.0 - mean) / std
        with torch.inference_mode():
            rows.append(model.features(torch.from_numpy(arr).permute(2, 0, 1)[None]).numpy()[0])
    return np.stack(rows)


def test_patch_reader_reads_by_index_and_pickles(setup):
    _, slide, _, _ = setup
    coords = _coords()
    reader = PatchReader(slide, coords, _attrs(slide))
    batch = reader.read([3, 0, 5])
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    import openslide

    osr = openslide.OpenSlide(slide)
    expected = np.asarray(
        Image.fromarray(read_rgb(osr, tuple(int(v) for v in coords[0]), 0, (128, 128))).resize(
            (64, 64), Image.Resampling.BILINEAR
        )
    )
    assert np.array_equal(batch[1], expected)
    # The edge patch is white where it leaves the slide.
    assert (batch[2][-10:, -10:] >= 250).all()
    handle = reader.open()
    assert reader.open() is handle  # opened once, kept open
    clone = pickle.loads(pickle.dumps(reader))  # what a worker process receives: no handle
    assert clone._slide is None
    assert np.array_equal(clone.read([3, 0, 5]), batch)


def test_patch_reader_rejects_a_missing_level(setup):
    from hnm.core.errors import SlideError

    _, slide, _, _ = setup
    reader = PatchReader(slide, _coords(), _attrs(slide, level=3))
    with pytest.raises(SlideError, match="level 3 but the slide has 1 level"):
        reader.read([0])


@pytest.mark.parametrize("decode,path", [("cpu", "cpu-jpeg-tiles"), ("openslide", "cpu-openslide")])
def test_features_equal_the_encoder_on_openslide_pixels_in_tiles_order(setup, decode, path):
    root, slide, tiles, encoder = setup
    out = root / f"f_{decode}.h5"
    result = extract_slide(
        slide,
        "cmu1",
        str(tiles),
        str(encoder),
        0,
        str(out),
        ExtractSettings(batch_size=8, workers=2, device="cpu", decode=decode),
    )
    features, coords, attrs = read_features(out)
    assert np.array_equal(coords, _coords())
    assert features.shape == (37, 128) and features.dtype == np.float32
    expected = _independent_features(slide, _coords(), encoder)
    np.testing.assert_allclose(features, expected, atol=1e-5, rtol=1e-5)
    assert result.decode_path == path and attrs["decode_path"] == path
    _, meta = load_encoder_file(encoder)
    assert attrs["weights_sha256"] == meta.weights_sha256
    assert attrs["encoder_arch"] == "resnet_mini" and attrs["round"] == 0
    assert attrs["slide_id"] == "cmu1" and attrs["failed"] is False and attrs["error"] == ""
    assert attrs["mpp"] == 0.499 and attrs["target_mpp"] == 0.998 and attrs["patch_size"] == 64
    assert attrs["precision"] == "fp32" and attrs["dtype"] == "float32"
    assert attrs["throughput_img_s"] > 0


def test_jpeg_tile_reader_equals_openslide_reader(setup):
    from hnm.io.jpeg_tiles import JpegTiledLevel
    from hnm.io.patches import JpegTileReader, PatchGeometry

    _, slide, _, _ = setup
    coords = _coords()
    geometry = PatchGeometry.from_attrs(_attrs(slide))
    tiles = JpegTileReader(
        JpegTiledLevel.inspect(slide, (2220, 2967)), coords, geometry, "cmu1", slide
    )
    order = [5, 0, 36, 3, 3]
    assert np.array_equal(tiles.read(order), PatchReader(slide, coords, geometry).read(order))
    clone = pickle.loads(pickle.dumps(tiles))
    assert clone._bytes is None and np.array_equal(
        clone.read_range(30, 40), tiles.read(range(30, 37))
    )


def test_same_output_for_the_same_input(setup, caplog):
    root, slide, tiles, encoder = setup
    runs = []
    for workers in (0, 2, 2):
        out = root / f"det{len(runs)}.h5"
        extract_slide(
            slide,
            "cmu1",
            str(tiles),
            str(encoder),
            0,
            str(out),
            ExtractSettings(batch_size=16, workers=workers, device="cpu"),
        )
        runs.append(read_features(out)[0])
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[1], runs[2])
    # One encoder thread leaves a core for a reader process: reading then overlaps the encoder.
    with caplog.at_level("INFO"):
        extract_slide(
            slide,
            "cmu1",
            str(tiles),
            str(encoder),
            0,
            str(root / "overlap.h5"),
            ExtractSettings(batch_size=16, workers=1, threads=1, device="cpu"),
        )
    assert "1 reader processes beside 1 encoder threads" in caplog.text
    np.testing.assert_allclose(read_features(root / "overlap.h5")[0], runs[0], atol=1e-5, rtol=1e-5)


def test_bf16_on_cpu_is_close_to_fp32(setup):
    root, slide, tiles, encoder = setup
    ref = root / "fp32.h5"
    low = root / "bf16.h5"
    for path, precision in ((ref, "fp32"), (low, "bf16")):
        extract_slide(
            slide,
            "cmu1",
            str(tiles),
            str(encoder),
            0,
            str(path),
            ExtractSettings(
                batch_size=16, workers=0, device="cpu", precision=precision, channels_last=True
            ),
        )
    a, b = read_features(ref)[0], read_features(low)[0]
    assert read_feature_attrs(low)["precision"] == "bf16"
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99


def test_failed_tiles_file_gives_a_failed_empty_features_file(setup):
    root, slide, _, encoder = setup
    tiles = root / "failed_tiles.h5"
    write_tiles(
        tiles,
        np.zeros((0, 2), np.int64),
        _attrs(slide, failed=True, error="openslide cannot open it: bogus", level=-1),
    )
    out = root / "failed.h5"
    assert (
        main(
            [
                "extract",
                "--slide",
                slide,
                "--slide-id",
                "bad",
                "--tiles",
                str(tiles),
                "--encoder",
                str(encoder),
                "--round",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    features, coords, attrs = read_features(out)
    assert features.shape == (0, 128) and coords.shape == (0, 2)
    assert attrs["failed"] is True and attrs["error"] == "openslide cannot open it: bogus"
    assert attrs["round"] == 2 and attrs["slide_id"] == "bad"


def test_tiles_file_without_patches_gives_an_empty_features_file(setup):
    root, slide, _, encoder = setup
    tiles = root / "empty_tiles.h5"
    write_tiles(tiles, np.zeros((0, 2), np.int64), _attrs(slide))
    out = root / "empty.h5"
    extract_slide(
        slide, "cmu1", str(tiles), str(encoder), 0, str(out), ExtractSettings(device="cpu")
    )
    features, _, attrs = read_features(out)
    assert features.shape == (0, 128) and attrs["failed"] is False


def test_cli_extract(setup, caplog):
    root, slide, tiles, encoder = setup
    out = root / "cli" / "f.h5"
    with caplog.at_level("INFO"):
        code = main(
            [
                "extract",
                "--slide",
                slide,
                "--slide-id",
                "cmu1",
                "--tiles",
                str(tiles),
                "--encoder",
                str(encoder),
                "--round",
                "1",
                "--out",
                str(out),
                "--batch-size",
                "16",
                "--workers",
                "1",
                "--device",
                "cpu",
                "--decode",
                "auto",
            ]
        )
    assert code == 0
    features, coords, attrs = read_features(out)
    assert features.shape == (37, 128) and attrs["round"] == 1
    assert "decode path cpu-jpeg-tiles (no CUDA device)" in caplog.text
    assert "img/s" in caplog.text


def test_cli_extracts_several_slides_in_one_call(setup, caplog, monkeypatch):
    """One call per batch of slides: each slide gets its own file, equal to a call of its own,
    and the encoder is loaded once for the batch."""
    import hnm.extract.stage

    loads = []
    original = hnm.extract.stage.load_encoder_file
    monkeypatch.setattr(
        hnm.extract.stage, "load_encoder_file", lambda *a, **k: loads.append(a) or original(*a, **k)
    )
    root, slide, tiles, encoder = setup
    folder = root / "batch"
    common = ["--encoder", str(encoder), "--round", "0", "--batch-size", "16", "--workers", "0"]
    common += ["--device", "cpu"]
    alone = folder / "alone.h5"
    assert (
        main(
            [
                "extract",
                "--slide",
                slide,
                "--slide-id",
                "a",
                "--tiles",
                str(tiles),
                "--out",
                str(alone),
                *common,
            ]
        )
        == 0
    )
    outs = [str(folder / "a.h5"), str(folder / "b.h5")]
    with caplog.at_level("INFO"):
        code = main(
            [
                "extract",
                "--slide",
                slide,
                slide,
                "--slide-id",
                "a",
                "b",
                "--tiles",
                str(tiles),
                str(tiles),
                "--out",
                *outs,
                *common,
            ]
        )
    assert code == 0
    assert len(loads) == 2  # the single-slide call, then one for the two-slide call
    expected, _, _ = read_features(alone)
    for out, slide_id in zip(outs, ("a", "b")):
        features, _, attrs = read_features(out)
        assert attrs["slide_id"] == slide_id
        np.testing.assert_array_equal(features, expected)
    assert "b: wrote" in caplog.text


def test_cli_several_slides_need_one_value_of_each_option_per_slide(setup, capsys):
    root, slide, tiles, encoder = setup
    code = main(
        [
            "extract",
            "--slide",
            slide,
            slide,
            "--slide-id",
            "a",
            "b",
            "--tiles",
            str(tiles),
            "--encoder",
            str(encoder),
            "--round",
            "0",
            "--out",
            str(root / "x.h5"),
            str(root / "y.h5"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    # one tiles file of one slide for two slides: it could be a batch file, so the slides are
    # looked up in it by id, and the first one missing is named
    assert "slide 'a': no tiles file was passed" in capsys.readouterr().err
    assert not (root / "x.h5").exists()


def test_cli_gpu_decode_without_cuda_is_a_config_error(setup, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, slide, tiles, encoder = setup
    code = main(
        [
            "extract",
            "--slide",
            slide,
            "--slide-id",
            "cmu1",
            "--tiles",
            str(tiles),
            "--encoder",
            str(encoder),
            "--round",
            "0",
            "--out",
            str(root / "g.h5"),
            "--decode",
            "gpu",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "decode=gpu is not possible here: no CUDA device" in capsys.readouterr().err
    assert not (root / "g.h5").exists()


def test_unreadable_slide_fails_or_is_skipped(test_slides, tmp_path, setup, capsys):
    _, _, _, encoder = setup
    slide = str(test_slides / "unreadable.svs")
    tiles = tmp_path / "tiles.h5"
    write_tiles(
        tiles,
        np.array([[0, 0], [4, 4]]),
        _attrs(slide, slide_id="unreadable", patch_size=8, read_size=8),
    )
    args = [
        "extract",
        "--slide",
        slide,
        "--slide-id",
        "unreadable",
        "--tiles",
        str(tiles),
        "--encoder",
        str(encoder),
        "--round",
        "0",
        "--device",
        "cpu",
        "--workers",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err
    assert "slide 'unreadable'" in err and "reading patches failed" in err
    assert not (tmp_path / "a.h5").exists()
    assert main([*args, "--out", str(tmp_path / "b.h5"), "--on-slide-error", "skip"]) == 0
    features, _, attrs = read_features(tmp_path / "b.h5")
    assert features.shape == (0, 128) and attrs["failed"] is True
    assert "reading patches failed" in attrs["error"] and "on_slide_error" not in attrs["error"]
    assert "slide 'unreadable'" not in attrs["error"]  # the reader's words once, not nested


def test_missing_encoder_file_is_named(setup, capsys):
    root, slide, tiles, _ = setup
    code = main(
        [
            "extract",
            "--slide",
            slide,
            "--slide-id",
            "cmu1",
            "--tiles",
            str(tiles),
            "--encoder",
            str(root / "none.pt"),
            "--round",
            "0",
            "--out",
            str(root / "n.h5"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "none.pt not found" in capsys.readouterr().err


def test_open_patch_reader_picks_the_cheapest_reader(setup, test_slides):
    from hnm.io.patches import JpegTileReader, open_patch_reader

    _, slide, _, _ = setup
    coords = _coords()
    reader = open_patch_reader(slide, coords, _attrs(slide))
    assert isinstance(reader, JpegTileReader) and reader.path_name == "cpu-jpeg-tiles"
    plain = open_patch_reader(slide, coords, _attrs(slide), prefer_tiles=False)
    assert isinstance(plain, PatchReader) and plain.path_name == "cpu-openslide"
    assert np.array_equal(reader.read([7, 2]), plain.read([7, 2]))
    boxes = str(test_slides / "boxes.tiff")  # deflate tiles: openslide reads it
    other = open_patch_reader(boxes, np.array([[0, 0]]), _attrs(boxes, patch_size=16, read_size=16))
    assert isinstance(other, PatchReader) and other.read([0]).shape == (1, 16, 16, 3)
    assert "not JPEG-tiled" in other.why_not_tiles


def test_exact_reader_uses_tiles_only_on_whole_level_pixels(tmp_path):
    """Fine-tuning's readers (exact=True) must give openslide's pixels bit for bit: on a level
    below the top, patches on whole level pixels come from the JPEG tiles, and a tiles file
    with a patch between level pixels falls back to openslide."""
    from hnm.demo.synth import write_synthetic_slide
    from hnm.io.patches import JpegTileReader, open_patch_reader

    slide = str(tmp_path / "pyramid.tiff")
    write_synthetic_slide(slide, width=1100, height=1100, label=0, seed=2, mimic_regions=1)
    attrs = _attrs(slide, level=1, level_downsample=2.0, read_size=96, patch_size=48)
    whole = np.array([[0, 0], [302, 540], [996, 996], [512, 130]])
    reader = open_patch_reader(slide, whole, attrs, exact=True)
    assert isinstance(reader, JpegTileReader)
    openslide_pixels = PatchReader(slide, whole, attrs).read(range(len(whole)))
    assert np.array_equal(reader.read(range(len(whole))), openslide_pixels)
    between = whole + [[0, 0], [1, 0], [0, 0], [0, 3]]
    assert isinstance(open_patch_reader(slide, between, attrs), JpegTileReader)
    fallback = open_patch_reader(slide, between, attrs, exact=True)
    assert isinstance(fallback, PatchReader) and "between level-1 pixels" in fallback.why_not_tiles


def test_a_tile_failing_on_the_gpu_path_is_the_slides_error() -> None:
    """Was: an nvjpeg refusal left the GPU path as a RuntimeError, which skip mode did not catch."""
    from types import SimpleNamespace

    from hnm.core.errors import SlideError
    from hnm.extract.sources import gpu_batches

    reader = SimpleNamespace(slide_id="s1", slide_path="/x/s 1.tiff")

    def source():
        yield 0, torch.zeros(1)
        raise RuntimeError("nvjpeg: bitstream is corrupt")

    batches = gpu_batches(source(), reader)
    assert next(batches).shape == (1,)
    with pytest.raises(SlideError) as caught:
        next(batches)
    assert caught.value.slide_id == "s1" and "nvjpeg: bitstream is corrupt" in caught.value.problem

    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        yield

    with pytest.raises(torch.cuda.OutOfMemoryError):
        next(gpu_batches(out_of_memory(), reader))
