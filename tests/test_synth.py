"""The synthetic slide generator: a real pyramidal TIFF that openslide reads, deterministic, with
tumor and mimic regions that share mean colour but not texture, written in bounded memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from hnm.cli import main as cli_main
from hnm.commands.synth import slide_seed
from hnm.core.errors import ConfigError
from hnm.demo import synth
from hnm.demo.layout import make_layout
from hnm.demo.pyramid import level_dimensions, tiff_rational
from hnm.demo.render import Scene
from hnm.io.annotations import load_polygons, patch_tumor_fraction

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, **overrides) -> synth.SynthResult:
    settings = dict(
        width=2048,
        height=2048,
        mpp=0.5,
        label=1,
        seed=7,
        tumor_regions=1,
        mimic_regions=1,
        tumor_size_um=250.0,
        difficulty=0.3,
    )
    settings.update(overrides)
    return synth.write_synthetic_slide(path, **settings)


@pytest.fixture(scope="module")
def positive(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthResult:
    return _write(tmp_path_factory.mktemp("synth") / "positive.tiff")


def _digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_openslide_reads_levels_and_mpp(tmp_path: Path) -> None:
    result = _write(tmp_path / "wide.tiff", width=2500, height=1100, mpp=0.25, tumor_size_um=120.0)
    slide = openslide.OpenSlide(result.path)
    assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25, rel=1e-6)
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25, rel=1e-6)
    # halve until the longer side is under 1024: 2500 -> 1250 -> 625
    assert slide.level_dimensions == ((2500, 1100), (1250, 550), (625, 275))
    assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0), rel=1e-3)
    assert (result.width, result.height, result.mpp, result.label) == (2500, 1100, 0.25, 1)


def test_odd_mpp_and_single_level(tmp_path: Path) -> None:
    result = _write(tmp_path / "small.tiff", width=700, height=600, mpp=0.2431, tumor_size_um=60.0)
    slide = openslide.OpenSlide(result.path)
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.2431, rel=1e-6)
    assert slide.level_count == 1
    assert level_dimensions(700, 600) == [(700, 600)]
    assert level_dimensions(1024, 100) == [(1024, 100), (512, 50)]


@pytest.mark.parametrize("mpp", [0.2431, 0.25, 0.5, 0.2277, 1 / 3, 16.0, 1e-4, 1e4])
def test_resolution_is_written_as_the_closest_uint32_fraction(mpp: float) -> None:
    """The TIFF resolution (px/cm) is a fraction of two uint32 that reads back as the float
    within a part in 1e9, whichever tifffile writes it (tifffile 2025.2's own conversion missed
    0.2431 um/px by 3e-6)."""
    numerator, denominator = tiff_rational(1e4 / mpp)
    assert 0 < numerator < 2**32 and 0 < denominator < 2**32
    assert 1e4 / (numerator / denominator) == pytest.approx(mpp, rel=1e-9)
    if mpp == 0.2431:
        assert (numerator, denominator) == (100_000_000, 2431)


def test_colours_survive_jpeg_and_levels_are_averages(positive: synth.SynthResult) -> None:
    slide = openslide.OpenSlide(positive.path)
    background = np.asarray(slide.read_region((0, 0), 0, (48, 48)).convert("RGB"), float)
    assert np.all(np.abs(background.reshape(-1, 3).mean(axis=0) - [244, 243, 246]) < 2)
    # the same pixels rendered directly agree with what openslide decodes (YCbCr JPEG, Q90)
    x, y = np.round(positive.tumor_polygons[0].mean(axis=0)).astype(int) - 128
    read = np.asarray(slide.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB"), float)
    # the fixture's scene, rebuilt from the same seed as write_synthetic_slide does
    rng = np.random.default_rng(7)
    layout = make_layout(rng, 2048, 2048, 0.5, 1, 1, 1, 250.0)
    scene = Scene(layout, rng, 0.5, 0.3)
    rendered, is_background = scene.render(int(x), int(y), 256, 256)
    assert not is_background
    difference = np.abs(read - rendered)
    assert difference.mean() < 4.0
    assert (
        np.abs(read.reshape(-1, 3).mean(axis=0) - rendered.reshape(-1, 3).mean(axis=0)).max() < 1.5
    )
    # level 2 is the 4x4 average of level 0 (up to JPEG)
    level0 = np.asarray(slide.read_region((512, 512), 0, (1024, 1024)).convert("RGB"), float)
    level2 = np.asarray(slide.read_region((512, 512), 2, (256, 256)).convert("RGB"), float)
    averaged = level0.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(level2 - averaged).mean() < 3.0


def _region(
    slide: openslide.OpenSlide, polygon: np.ndarray, level: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the polygon's bounding box at `level`, and a mask of its interior (edges eroded)."""
    scale = slide.level_downsamples[level]
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int)
    size = (int((x1 - x0) / scale) + 1, int((y1 - y0) / scale) + 1)
    pixels = np.asarray(slide.read_region((int(x0), int(y0)), level, size).convert("RGB"), float)
    outline = Image.new("L", size, 0)
    ImageDraw.Draw(outline).polygon(((polygon - [x0, y0]) / scale).ravel().tolist(), fill=1)
    inside = ndimage.binary_erosion(np.asarray(outline, bool), iterations=max(2, int(16 / scale)))
    return pixels, inside


def _texture(pixels: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Mean colour, mean area of dark (nuclear) blobs, and blobs per 10^4 px."""
    dark = (pixels.mean(axis=2) < 120) & inside
    labels, count = ndimage.label(dark)
    areas = np.bincount(labels.ravel())[1:]
    return pixels[inside].mean(axis=0), float(areas.mean()), count / inside.sum() * 1e4


@pytest.mark.parametrize("level", [0, 2])
def test_tumor_and_mimic_share_mean_colour_not_texture(
    positive: synth.SynthResult, level: int
) -> None:
    slide = openslide.OpenSlide(positive.path)
    tumor_colour, tumor_blob, tumor_count = _texture(
        *_region(slide, positive.tumor_polygons[0], level)
    )
    mimic_colour, mimic_blob, mimic_count = _texture(
        *_region(slide, positive.mimic_polygons[0], level)
    )
    assert np.abs(tumor_colour - mimic_colour).max() < 6.0  # same mean colour, within ~2%
    assert tumor_blob > 1.6 * mimic_blob  # tumor nuclei are bigger (about 2.5x at difficulty 0.3)
    assert tumor_count < 0.6 * mimic_count  # and fewer per area


def test_difficulty_one_makes_mimic_texture_like_tumor(tmp_path: Path) -> None:
    result = _write(tmp_path / "hard.tiff", difficulty=1.0)
    slide = openslide.OpenSlide(result.path)
    _, tumor_blob, tumor_count = _texture(*_region(slide, result.tumor_polygons[0], 0))
    _, mimic_blob, mimic_count = _texture(*_region(slide, result.mimic_polygons[0], 0))
    assert 0.6 < tumor_blob / mimic_blob < 1.6
    assert 0.6 < tumor_count / mimic_count < 1.6


def test_same_arguments_same_bytes_and_threads_do_not_matter(tmp_path: Path) -> None:
    settings = dict(width=1024, height=768, tumor_size_um=150.0)
    first = _write(tmp_path / "a.tiff", **settings)
    again = _write(tmp_path / "b.tiff", workers=2, **settings)
    other = _write(tmp_path / "c.tiff", seed=8, **settings)
    assert _digest(first.path) == _digest(again.path)
    assert _digest(first.path) != _digest(other.path)
    for mine, theirs in zip(first.tumor_polygons, again.tumor_polygons, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_cli_seeds_each_slide_id_and_writes_ground_truth(tmp_path: Path) -> None:
    def make(slide_id: str, name: str, label: int = 1) -> int:
        return cli_main(
            [
                "synth",
                "--slide-id",
                slide_id,
                "--label",
                str(label),
                "--cohort-seed",
                "3",
                "--out",
                str(tmp_path / f"{name}.tiff"),
                "--annotation",
                str(tmp_path / f"{name}.geojson"),
                "--width",
                "1024",
                "--height",
                "1024",
                "--tumor-regions",
                "1",
                "--mimic-regions",
                "2",
                "--tumor-size-um",
                "150",
            ]
        )

    assert make("slide_a", "a") == 0
    assert make("slide_a", "a_again") == 0
    assert make("slide_b", "b") == 0
    assert make("slide_n", "n", label=0) == 0
    assert _digest(tmp_path / "a.tiff") == _digest(tmp_path / "a_again.tiff")
    assert _digest(tmp_path / "a.tiff") != _digest(tmp_path / "b.tiff")
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "a_again.geojson").read_bytes()
    assert slide_seed(3, "slide_a") != slide_seed(3, "slide_b") != slide_seed(4, "slide_b")
    assert slide_seed(3, "slide_a") == slide_seed(3, "slide_a") < 2**63

    document = json.loads((tmp_path / "a.geojson").read_text())
    names = [feature["properties"]["classification"]["name"] for feature in document["features"]]
    assert document["type"] == "FeatureCollection"
    assert names.count("Tumor") == 1 and names.count("Mimic") == 2 and names.count("Tissue") >= 2
    ring = document["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    assert load_polygons(tmp_path / "n.geojson") == []  # a negative slide has no tumor
    assert len(load_polygons(tmp_path / "n.geojson", "mimic")) == 2
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary files left behind


def test_negative_slides_have_no_tumor(tmp_path: Path) -> None:
    result = _write(tmp_path / "negative.tiff", label=0, mimic_regions=2)
    assert result.tumor_polygons == []
    assert len(result.mimic_polygons) == 2
    annotation = tmp_path / "negative.geojson"
    synth.write_annotation(annotation, result)
    assert load_polygons(annotation) == []


def test_annotation_round_trips_and_regions_lie_in_tissue(
    positive: synth.SynthResult, tmp_path: Path
) -> None:
    annotation = tmp_path / "truth.geojson"
    synth.write_annotation(annotation, positive)
    loaded = load_polygons(annotation, "TUMOR")
    assert len(loaded) == len(positive.tumor_polygons) == 1
    np.testing.assert_allclose(loaded[0], positive.tumor_polygons[0], atol=0.006)
    tissue = load_polygons(annotation, "Tissue")
    for polygon in positive.tumor_polygons + positive.mimic_polygons:
        corners = np.array([polygon.min(axis=0), polygon.max(axis=0)])
        assert np.all(corners >= 0) and np.all(corners <= [positive.width, positive.height])
        centre = np.round(polygon.mean(axis=0)).astype(int) - 32
        assert patch_tumor_fraction(tissue, centre[None], 64)[0] == 1.0


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tumor_regions >= 1"):
        _write(tmp_path / "x.tiff", tumor_regions=0)
    with pytest.raises(ConfigError, match="multiple of 16"):
        _write(tmp_path / "x.tiff", tile_size=100)
    with pytest.raises(ConfigError, match="difficulty"):
        _write(tmp_path / "x.tiff", difficulty=1.5)
    with pytest.raises(ConfigError, match="smaller --tumor-size-um"):
        _write(tmp_path / "x.tiff", width=512, height=512, tumor_size_um=2000.0)
    assert not (tmp_path / "x.tiff").exists()


def test_writer_streams_tiles_in_bounded_memory(tmp_path: Path) -> None:
    """A 12288^2 px slide (432 MiB of level-0 RGB) is written with far less memory than that."""
    script = textwrap.dedent(f"""
        import resource, sys
        import tifffile
        sys.path.insert(0, {str(REPO)!r})
        from hnm.demo import synth
        kinds = []
        original = tifffile.TiffWriter.write
        def spy(self, data=None, *args, **kwargs):
            kinds.append(type(data).__name__)
            return original(self, data, *args, **kwargs)
        tifffile.TiffWriter.write = spy
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        synth.write_synthetic_slide(
            {str(tmp_path / "big.tiff")!r}, width=12288, height=12288, label=1, seed=1,
            tumor_regions=2, mimic_regions=2, workers=2,
        )
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(after - before, ",".join(kinds))
        """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    growth_kib, kinds = done.stdout.split()
    assert set(kinds.split(",")) == {"generator"}  # every level is streamed from an iterator
    assert int(growth_kib) < 200 * 1024, f"peak RSS grew by {int(growth_kib) / 1024:.0f} MiB"
    assert openslide.OpenSlide(str(tmp_path / "big.tiff")).level_dimensions[0] == (12288, 12288)
