"""GPU JPEG-tile path: tile bytes, table splicing and colours checked on the CPU against openslide;
nvjpeg itself only where CUDA and torchvision exist."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
import torch
from PIL import Image

from hnm.extract import gpu_decode as gd
from hnm.io import jpeg_tiles as jt
from hnm.io.slide import read_rgb


def _split_jpeg(full: bytes) -> tuple[bytes, bytes]:
    """A complete JPEG -> (tables-only stream, abbreviated tile stream), APPn markers removed."""
    i, tables, head = 2, b"", b""
    while True:
        marker = full[i + 1]
        length = int.from_bytes(full[i + 2 : i + 4], "big")
        segment = full[i : i + 2 + length]
        if marker in (0xDB, 0xC4):
            tables += segment
        elif not 0xE0 <= marker <= 0xEF:
            head += segment
        i += 2 + length
        if marker == 0xDA:
            break
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + head + full[i:]


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 0.7) % 256, (y * 0.8) % 256, ((x + y) * 0.5) % 256], -1) * 0.7
    return (base + rng.integers(0, 60, (height, width, 3))).astype(np.uint8)


@pytest.fixture(scope="module")
def aperio_like(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A TIFF coded like Aperio's: Photometric RGB, RGB-coded JPEG tiles without any colour
    marker, shared JPEGTables; written tile by tile with tifffile."""
    height, width, tile = 300, 333, 64
    image = _image(height, width)
    tiles, tables = [], set()
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = image[ty : ty + tile, tx : tx + tile]
            block[: part.shape[0], : part.shape[1]] = part
            full = imagecodecs.jpeg8_encode(block, level=90, outcolorspace="rgb", subsampling="444")
            shared, own = _split_jpeg(full)
            tables.add(shared)
            tiles.append(own)
    assert len(tables) == 1
    shared = tables.pop()
    path = str(tmp_path_factory.mktemp("aperio") / "aperio_like.tif")
    tifffile.imwrite(
        path,
        data=iter(tiles),
        shape=(height, width, 3),
        dtype="uint8",
        tile=(tile, tile),
        compression="jpeg",
        photometric="rgb",
        planarconfig="contig",
        extratags=[(347, 7, len(shared), shared, True)],
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffFile(
        path, mode="r+b"
    ) as tif:  # tifffile labels JPEG as YCbCr; Aperio says RGB
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(2)
    return path, image


def _vips_pyramid(path: str, quality: int) -> str:
    pyvips = pytest.importorskip("pyvips")
    image = pyvips.Image.new_from_array(_image(700, 900, seed=1)).copy(interpretation="srgb")
    image.tiffsave(
        path,
        tile=True,
        tile_width=128,
        tile_height=128,
        pyramid=True,
        compression="jpeg",
        Q=quality,
        xres=2000.0,
        yres=2000.0,
        resunit="cm",
    )
    return path


@pytest.fixture(scope="module")
def vips_pyramid(tmp_path_factory) -> str:
    """A pyramidal JPEG TIFF as libvips writes it below Q 90: YCbCr-coded, chroma subsampled."""
    return _vips_pyramid(str(tmp_path_factory.mktemp("vips") / "ycbcr.tif"), 85)


@pytest.fixture(scope="module")
def vips_rgb_pyramid(tmp_path_factory) -> str:
    """libvips at Q >= 90 writes RGB-coded JPEG tiles (component ids R, G, B; Adobe transform 0)."""
    return _vips_pyramid(str(tmp_path_factory.mktemp("vips") / "rgb.tif"), 90)


def _level(path: str) -> jt.JpegTiledLevel:
    return jt.JpegTiledLevel.inspect(path, openslide.OpenSlide(path).level_dimensions[0])


def _swapped_colours(streams: list[bytes], level: jt.JpegTiledLevel) -> torch.Tensor:
    """A decoder with wrong colours (R and B swapped), as a stand-in for a misbehaving one."""
    return gd.decode_pillow(streams, level).flip(1)


def _patches(level, coords, downsample, read_size, patch_size):
    tiles = jt.TileBytes(level)
    try:
        plan = jt.plan_batch(level, np.asarray(coords), downsample, read_size)
        streams = [tiles.read(int(i)) for i in plan.tiles]
    finally:
        tiles.close()
    decoded = gd.decode_pillow([s for s in streams if s is not None], level)
    return gd.assemble(decoded, plan, level, read_size, patch_size)


def _openslide_patch(slide, xy, level, size):
    return read_rgb(slide, (int(xy[0]), int(xy[1])), level, (size, size)).astype(np.int32)


def _as_hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).round().numpy().astype(np.int32)


def test_svs_tiles_spliced_equal_openslide_pixels(test_slides):
    path = str(test_slides / "cmu-1-small-region.svs")
    slide = openslide.OpenSlide(path)
    level = jt.JpegTiledLevel.inspect(path, slide.level_dimensions[0])
    assert (level.photometric, level.tile_width, level.tiles_across, level.tiles_down) == (
        2,
        240,
        10,
        13,
    )
    assert jt.adobe_marker(0) in level.header  # RGB-coded tiles are declared as such
    reader = jt.TileBytes(level)
    worst = 0
    for index in range(level.tiles_across * level.tiles_down):
        stream = reader.read(index)
        with Image.open(io.BytesIO(stream)) as image:
            decoded = np.asarray(image.convert("RGB")).astype(np.int32)
        tx, ty = index % level.tiles_across, index // level.tiles_across
        w, h = min(240, level.width - tx * 240), min(240, level.height - ty * 240)
        expected = _openslide_patch(slide, (tx * 240, ty * 240), 0, 240)[:h, :w]
        worst = max(worst, int(np.abs(decoded[:h, :w] - expected).max()))
    reader.close()
    assert worst <= 1


def test_without_the_adobe_marker_svs_colours_are_wrong(test_slides):
    # Why the marker is spliced in: decoders take unmarked 3-component JPEG for YCbCr.
    path = str(test_slides / "cmu-1-small-region.svs")
    level = jt.JpegTiledLevel.inspect(path, openslide.OpenSlide(path).level_dimensions[0])
    reader = jt.TileBytes(level)
    stream = reader.read(55)
    reader.close()
    unmarked = stream.replace(jt.adobe_marker(0), b"", 1)
    assert not jt.declares_colour(unmarked)
    good = np.asarray(Image.open(io.BytesIO(stream)).convert("RGB")).astype(float)
    bad = np.asarray(Image.open(io.BytesIO(unmarked)).convert("RGB")).astype(float)
    assert np.abs(good - bad).mean() > 10


def test_svs_patches_assembled_from_tiles_equal_openslide(test_slides):
    path = str(test_slides / "cmu-1-small-region.svs")
    slide = openslide.OpenSlide(path)
    level = jt.JpegTiledLevel.inspect(path, slide.level_dimensions[0])
    rng = np.random.default_rng(0)
    coords = np.stack([rng.integers(0, 2220, 12), rng.integers(0, 2967, 12)], 1)
    coords[0] = (2220 - 100, 2967 - 50)  # runs past the right and bottom edges: white there
    got = _patches(level, coords, 1.0, 224, 224)
    assert got.shape == (12, 3, 224, 224)
    for b, xy in enumerate(coords):
        assert np.abs(_as_hwc(got[b]) - _openslide_patch(slide, xy, 0, 224)).max() <= 1
    assert (_as_hwc(got[0])[60:, :, :] == 255).all()


def test_rgb_coded_tiff_without_markers(aperio_like):
    path, image = aperio_like
    slide = openslide.OpenSlide(path)
    level = jt.JpegTiledLevel.inspect(path, (333, 300))
    assert level.photometric == jt.PHOTOMETRIC_RGB and jt.adobe_marker(0) in level.header
    coords = np.array([[0, 0], [100, 150], [300, 280], [17, 3], [250, 10]])
    got = _patches(level, coords, 1.0, 64, 64)
    for b, xy in enumerate(coords):
        assert np.abs(_as_hwc(got[b]) - _openslide_patch(slide, xy, 0, 64)).max() <= 1
    # and against the picture that was encoded (JPEG q90: close, not equal)
    assert np.abs(_as_hwc(got[1]) - image[150:214, 100:164]).mean() < 6


def test_ycbcr_jfif_tiff_gets_no_extra_marker(tmp_path):
    image = _image(200, 260, seed=2)
    path = str(tmp_path / "ycbcr.tif")
    tifffile.imwrite(
        path,
        image,
        tile=(64, 64),
        compression="jpeg",
        compressionargs={"level": 90},
        photometric="ycbcr",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    level = jt.JpegTiledLevel.inspect(path, (260, 200))
    assert level.photometric == jt.PHOTOMETRIC_YCBCR
    assert b"Adobe" not in level.header  # its tiles carry JFIF markers already
    slide = openslide.OpenSlide(path)
    coords = np.array([[5, 7], [190, 130]])
    got = _patches(level, coords, 1.0, 64, 64)
    for b, xy in enumerate(coords):
        assert np.abs(_as_hwc(got[b]) - _openslide_patch(slide, xy, 0, 64)).max() <= 1


def test_pyramid_level_with_fractional_positions_and_resize(vips_pyramid):
    slide = openslide.OpenSlide(vips_pyramid)
    assert slide.level_count >= 2
    downsample = slide.level_downsamples[1]
    level = jt.JpegTiledLevel.inspect(vips_pyramid, slide.level_dimensions[1])
    assert level.tile_width == 128 and level.height == slide.level_dimensions[1][1]
    # Multiples of the downsample map onto whole level pixels: equal to openslide.
    whole = np.array([[0, 0], [260, 132], [880, 680]])
    got = _patches(level, whole, downsample, 48, 48)
    for b, xy in enumerate(whole):
        assert np.abs(_as_hwc(got[b]) - _openslide_patch(slide, xy, 1, 48)).max() <= 1
    # Odd level-0 positions fall between level pixels; openslide blends them (fixed point).
    odd = np.array([[3, 5], [301, 177]])
    got = _patches(level, odd, downsample, 48, 48)
    for b, xy in enumerate(odd):
        assert np.abs(_as_hwc(got[b]) - _openslide_patch(slide, xy, 1, 48)).mean() < 1.0
    # read 96 -> 48 px: within a grey level or two of the CPU path's Pillow BILINEAR.
    from hnm.io.patches import resize_patch

    got = _patches(level, whole, downsample, 96, 48)
    for b, xy in enumerate(whole[:2]):
        expected = resize_patch(read_rgb(slide, tuple(int(v) for v in xy), 1, (96, 96)), 48).astype(
            np.int32
        )
        assert np.abs(_as_hwc(got[b]) - expected).mean() < 1.5


def test_plan_shares_tiles_between_neighbours(aperio_like):
    path, _ = aperio_like
    level = jt.JpegTiledLevel.inspect(path, (333, 300))
    coords = np.array([[0, 0], [32, 0], [64, 0], [320, 290]])
    plan = jt.plan_batch(level, coords, 1.0, 40)
    # tiles are 64 px: patches 0-2 need tiles 0, 1, 2 once each; the last one also needs nothing
    # beyond the grid (6 x 5 tiles), which maps to the white slot.
    assert list(plan.tiles[:3]) == [0, 1, 2]
    assert plan.lookup.shape == (4, 2, 2)
    white = len(plan.tiles)
    assert (plan.lookup[3] == white).sum() == 3  # only its top-left tile exists
    assert plan.span == 40 and not plan.frac.any()


def test_non_jpeg_levels_are_refused_with_a_reason(test_slides, tmp_path):
    with pytest.raises(jt.NotJpegTiled, match="compression 8 is not JPEG"):
        jt.JpegTiledLevel.inspect(str(test_slides / "boxes.tiff"), (300, 250))
    path = str(tmp_path / "strips.tif")
    tifffile.imwrite(path, _image(50, 60))
    with pytest.raises(jt.NotJpegTiled, match="no tiled TIFF page"):
        jt.JpegTiledLevel.inspect(path, (60, 50))
    text = tmp_path / "x.mrxs"
    text.write_text("not a tiff")
    with pytest.raises(jt.NotJpegTiled, match="not a TIFF"):
        jt.JpegTiledLevel.inspect(str(text), (1, 1))


def test_patch_source_pipeline_on_cpu_matches_patch_reader(test_slides):
    from hnm.io.patches import PatchReader

    path = str(test_slides / "cmu-1-small-region.svs")
    level = jt.JpegTiledLevel.inspect(path, (2220, 2967))
    rng = np.random.default_rng(1)
    coords = np.stack([rng.integers(0, 2000, 23), rng.integers(0, 2700, 23)], 1)
    source = gd.JpegPatchSource(
        level,
        coords,
        1.0,
        128,
        64,
        batch_size=5,
        device=torch.device("cpu"),
        decode=gd.decode_pillow,
        prefetch=2,
        readers=2,
    )
    batches = list(source)
    assert [start for start, _ in batches] == [0, 5, 10, 15, 20]
    got = torch.cat([x for _, x in batches])
    attrs = {"level": 0, "level_downsample": 1.0, "read_size": 128, "patch_size": 64}
    expected = PatchReader(path, coords, attrs, "cmu1").read(range(len(coords))).astype(np.float32)
    difference = np.abs(got.permute(0, 2, 3, 1).numpy() - expected)
    assert difference.mean() < 1.5 and difference.max() <= 40  # bilinear AA: torch vs Pillow


def test_check_decoder_catches_wrong_colours(aperio_like):
    path, _ = aperio_like
    level = jt.JpegTiledLevel.inspect(path, (333, 300))
    ok, difference = gd.check_decoder(gd.decode_pillow, level)
    assert ok and difference == 0.0

    ok, difference = gd.check_decoder(_swapped_colours, level)
    assert not ok and difference > 3


def test_decoded_tiles_are_fitted_to_the_level_tile_size(aperio_like):
    level = jt.JpegTiledLevel.inspect(aperio_like[0], (333, 300))
    th, tw = level.tile_height, level.tile_width
    block = torch.zeros((2, 3, th, tw), dtype=torch.uint8)
    assert gd.fit_tiles(block, level) is block
    small = torch.full((3, th - 5, tw - 7), 9, dtype=torch.uint8)
    large = torch.full((3, th + 4, tw + 2), 7, dtype=torch.uint8)
    fitted = gd.fit_tiles([small, large], level)
    assert fitted.shape == (2, 3, th, tw)
    assert (fitted[0, :, : th - 5, : tw - 7] == 9).all() and (fitted[0, :, th - 5 :] == 255).all()
    assert (fitted[0, :, :, tw - 7 :] == 255).all() and (fitted[1] == 7).all()
    assert gd.no_tiles(level, torch.device("cpu")).shape == (0, 3, th, tw)


def test_component_sampling_tells_which_tiles_decode_as_coded_planes(
    vips_pyramid, vips_rgb_pyramid, test_slides
):
    ycbcr, rgb = _level(vips_pyramid), _level(vips_rgb_pyramid)
    reader = jt.TileBytes(ycbcr)
    assert jt.component_sampling(reader.read(0)) == [(2, 2), (1, 1), (1, 1)]
    reader.close()
    assert ycbcr.sampling == [(2, 2), (1, 1), (1, 1)] and rgb.sampling == [(1, 1)] * 3
    assert gd.raw_planes_are_rgb(ycbcr) == (False, "tiles are YCbCr-coded")
    assert gd.raw_planes_are_rgb(rgb) == (True, "")
    svs = _level(str(test_slides / "cmu-1-small-region.svs"))
    assert gd.raw_planes_are_rgb(svs) == (True, "")
    # An RGB-coded stream with subsampled components cannot come out of nvjpeg as full planes.
    ycbcr.photometric = jt.PHOTOMETRIC_RGB
    ok, why = gd.raw_planes_are_rgb(ycbcr)
    assert not ok and "sampling [(2, 2), (1, 1), (1, 1)]" in why


def test_raw_decoder_without_nvjpeg_says_so(monkeypatch):
    from hnm.extract import nvjpeg_raw

    monkeypatch.setattr(nvjpeg_raw, "_candidate_paths", lambda: iter(["/nonexistent/libnvjpeg.so"]))
    lib, why = nvjpeg_raw.load_library()
    assert lib is None and "no loadable libnvjpeg" in why and "/nonexistent/libnvjpeg.so" in why
    with pytest.raises(nvjpeg_raw.NvjpegError, match="no loadable libnvjpeg"):
        nvjpeg_raw.RawNvjpeg(torch.device("cpu"))


def test_stage_picks_the_decoder_that_agrees_with_pillow(monkeypatch, vips_pyramid, test_slides):
    """The choice logic, on the CPU: nvjpeg's two decoders stood in for by Pillow (right colours)
    and a colour-swapping Pillow (what torchvision's nvjpeg does to RGB-coded tiles)."""
    from hnm.extract.sources import gpu_decoder

    monkeypatch.setattr(gd, "make_raw_nvjpeg_decoder", lambda device: gd.decode_pillow)
    monkeypatch.setattr(gd, "make_nvjpeg_decoder", lambda device: _swapped_colours)
    svs = _level(str(test_slides / "cmu-1-small-region.svs"))
    assert gpu_decoder(svs, "svs", torch.device("cpu")) == (gd.decode_pillow, "")
    # YCbCr tiles never take the coded planes; here the stand-in for torchvision swaps colours.
    decode, why = gpu_decoder(_level(vips_pyramid), "ycbcr", torch.device("cpu"))
    assert decode is None
    assert "coded planes: tiles are YCbCr-coded" in why and "torchvision: mean |diff|" in why

    def missing(device):
        raise RuntimeError("no loadable libnvjpeg found")

    monkeypatch.setattr(gd, "make_raw_nvjpeg_decoder", missing)
    decode, why = gpu_decoder(svs, "svs", torch.device("cpu"))
    assert decode is None and "coded planes: no loadable libnvjpeg found" in why


# ---- on a GPU ------------------------------------------------------------------------------------

_NVJPEG, _WHY = gd.nvjpeg_available()
gpu = pytest.mark.skipif(not _NVJPEG, reason=f"GPU decode needs CUDA and torchvision: {_WHY}")


# nvjpeg (torchvision.io.decode_jpeg on CUDA, as measured on an H200) applies a YCbCr->RGB transform
# to every 3-component JPEG, Adobe marker or not, so RGB-coded tiles (Aperio, libvips at Q >= 90)
# go through hnm.extract.nvjpeg_raw, which asks nvjpeg for the coded planes. The stage checks each slide's
# decoder against Pillow and falls back to the CPU path when they disagree; these tests hold the
# GPU path to the CPU's pixels and features.


@gpu
@pytest.mark.gpu
def test_nvjpeg_matches_pillow_on_ycbcr_tiles(vips_pyramid):
    decode = gd.make_nvjpeg_decoder(torch.device("cuda"))
    ok, difference = gd.check_decoder(decode, _level(vips_pyramid))
    assert ok, difference


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("which", ["vips_rgb", "aperio_svs"])
def test_coded_planes_match_pillow_on_rgb_coded_tiles(which, vips_rgb_pyramid, test_slides):
    svs = str(test_slides / "cmu-1-small-region.svs")
    level = _level(vips_rgb_pyramid if which == "vips_rgb" else svs)
    ok, difference = gd.check_decoder(gd.make_raw_nvjpeg_decoder(torch.device("cuda")), level, 64)
    assert ok, difference
    wrong, difference = gd.check_decoder(gd.make_nvjpeg_decoder(torch.device("cuda")), level)
    assert not wrong, f"torchvision's nvjpeg now decodes RGB-coded tiles right ({difference})"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("which", ["ycbcr", "rgb"])
def test_gpu_source_matches_cpu_reference(which, vips_pyramid, vips_rgb_pyramid):
    from hnm.extract.sources import gpu_decoder

    path = vips_pyramid if which == "ycbcr" else vips_rgb_pyramid
    size = openslide.OpenSlide(path).level_dimensions[0]
    level = jt.JpegTiledLevel.inspect(path, size)
    coords = np.stack(
        np.meshgrid(np.arange(0, size[0] - 112, 112), np.arange(0, size[1] - 112, 112)), -1
    ).reshape(-1, 2)
    args = (level, coords, 1.0, 112, 112)

    def patches(device: str, decode) -> torch.Tensor:
        source = gd.JpegPatchSource(
            *args, batch_size=16, device=torch.device(device), decode=decode
        )
        return torch.cat([x for _, x in source]).cpu()

    decode, why = gpu_decoder(level, which, torch.device("cuda"))
    assert decode is not None, why
    cpu = patches("cpu", gd.decode_pillow)
    assert (patches("cuda", decode) - cpu).abs().mean() < 3.0


def _tiles(tmp_path, slide: str, size: tuple[int, int], step: int):
    from hnm.io.h5io import write_tiles

    coords = np.stack(
        np.meshgrid(np.arange(0, size[0] - 2 * step, step), np.arange(0, size[1] - 2 * step, step)),
        -1,
    ).reshape(-1, 2)
    write_tiles(
        tmp_path / "t.h5",
        coords,
        dict(
            slide_id="s",
            slide_path=slide,
            patch_size=step // 2 if step > 112 else step,
            target_mpp=1.0,
            mpp=0.5,
            level=0,
            level_downsample=1.0,
            read_size=step,
            failed=False,
            error="",
        ),
    )
    return coords


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("which", ["ycbcr_pyramid", "rgb_pyramid", "rgb_coded_svs"])
def test_stage_features_equal_the_cpu_path(
    which, test_slides, vips_pyramid, vips_rgb_pyramid, tmp_path
):
    from hnm.encoders import build_encoder, save_encoder_file
    from hnm.extract.settings import ExtractSettings
    from hnm.extract.stage import extract_slide
    from hnm.io.h5io import read_features

    if which != "rgb_coded_svs":
        slide, step = (vips_pyramid if which == "ycbcr_pyramid" else vips_rgb_pyramid), 112
    else:
        slide, step = str(test_slides / "cmu-1-small-region.svs"), 224
    coords = _tiles(tmp_path, slide, openslide.OpenSlide(slide).level_dimensions[0], step)
    save_encoder_file(tmp_path / "e.pt", build_encoder("resnet18", seed=0), source="random:0")
    out, paths = {}, {}
    for decode in ("gpu", "cpu"):
        result = extract_slide(
            slide,
            "s",
            str(tmp_path / "t.h5"),
            str(tmp_path / "e.pt"),
            0,
            str(tmp_path / f"{decode}.h5"),
            ExtractSettings(batch_size=64, device="cuda", precision="fp32", decode=decode),
        )
        out[decode] = read_features(tmp_path / f"{decode}.h5")
        paths[decode] = result.decode_path
    assert paths == {"cpu": "cpu-jpeg-tiles", "gpu": "gpu-nvjpeg"}
    assert out["gpu"][2]["decode_path"] == paths["gpu"]
    a, b = out["gpu"][0], out["cpu"][0]
    assert np.array_equal(out["gpu"][1], coords) and a.shape == b.shape
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.995, cosine.min()
