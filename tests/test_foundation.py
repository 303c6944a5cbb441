"""Foundation-model presets: published key layouts, strict loading, the encoder file that names the
base weights, and the resolution checks.

The published networks are far too big to build in CI (ViT-g holds 1.1 B parameters, 4.5 GB in
float32), so their full layouts are checked on the `meta` device (shapes, no memory), and every
load, forward pass and refusal runs on a reduced variant of each preset (2 blocks, 16 wide) that
keeps every kind of parameter and every name, through the same code. The reduced weights in
tests/data/timm_reference were made by timm itself from the model cards' arguments, so loading
them and reproducing timm's outputs checks the network, not only the names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hnm.cli import main
from hnm.core.errors import CheckpointError, ConfigError
from hnm.encoders import build_encoder, load_encoder_file, read_encoder_meta, save_encoder_file
from hnm.encoders.base_weights import build_vit, expected_layout, load_base_backbone
from hnm.encoders.foundation import build_preset_encoder
from hnm.encoders.presets import PRESETS, check_tiling, get_preset, workflow_problems
from hnm.encoders.safetensors_io import read_safetensors, write_safetensors
from hnm.extract.settings import ExtractSettings
from hnm.extract.stage import extract_slide
from hnm.io.h5io import read_features, write_tiles

PUBLISHED = ("uni", "uni2_h", "virchow2", "h_optimus_0", "prov_gigapath")
REFERENCE = Path(__file__).parent / "data" / "timm_reference" / "reduced_presets.safetensors"

# Shapes read off each model card's timm arguments (docs/foundation.md cites them): the position
# embedding tells the token layout, fc1/fc2 the MLP kind and width, reg_token the registers.
CARD_SHAPES = {
    "uni": {
        "patch_embed.proj.weight": (1024, 3, 16, 16),
        "pos_embed": (1, 197, 1024),
        "blocks.23.attn.qkv.weight": (3072, 1024),
        "blocks.23.mlp.fc1.weight": (4096, 1024),
        "blocks.23.mlp.fc2.weight": (1024, 4096),
        "blocks.23.ls2.gamma": (1024,),
    },
    "uni2_h": {
        "patch_embed.proj.weight": (1536, 3, 14, 14),
        "pos_embed": (1, 256, 1536),
        "reg_token": (1, 8, 1536),
        "blocks.23.mlp.fc1.weight": (8192, 1536),
        "blocks.23.mlp.fc2.weight": (1536, 4096),
    },
    "virchow2": {
        "patch_embed.proj.weight": (1280, 3, 14, 14),
        "pos_embed": (1, 261, 1280),
        "reg_token": (1, 4, 1280),
        "blocks.31.mlp.fc1.weight": (6832, 1280),
        "blocks.31.mlp.fc2.weight": (1280, 3416),
    },
    "h_optimus_0": {
        "patch_embed.proj.weight": (1536, 3, 14, 14),
        "pos_embed": (1, 256, 1536),
        "reg_token": (1, 4, 1536),
        "blocks.39.mlp.fc1.weight": (8192, 1536),
    },
    "prov_gigapath": {
        "patch_embed.proj.weight": (1536, 3, 16, 16),
        "pos_embed": (1, 197, 1536),
        "blocks.39.mlp.fc1.weight": (8192, 1536),
        "blocks.39.ls1.gamma": (1536,),
    },
}
# Parameter counts as the model cards and papers give them, with the rounding they were given
# to ("1.1B" covers 1.05-1.15 B), and output widths.
CARD_PARAMETERS = {
    "uni": (304e6, 0.01),
    "virchow2": (632e6, 0.01),
    "h_optimus_0": (1.1e9, 0.05),
    "prov_gigapath": (1.13e9, 0.01),
}
CARD_WIDTH = {
    "uni": 1024,
    "uni2_h": 1536,
    "virchow2": 2560,
    "h_optimus_0": 1536,
    "prov_gigapath": 1536,
}


def reference_weights(name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}/"
    tensors = read_safetensors(REFERENCE)
    return {
        k[len(prefix) :]: v.float()
        for k, v in tensors.items()
        if k.startswith(prefix) and not k.startswith(f"{prefix}output")
    }


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        write_safetensors(path, state)
    else:
        torch.save(state, path)
    return path


# ---- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED)
def test_full_layout_matches_the_model_card_without_allocating(name: str) -> None:
    preset = get_preset(name)
    model = build_vit(preset.vit, "meta")
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in CARD_SHAPES[name].items():
        assert layout[key] == shape, key
    assert preset.feature_dim == CARD_WIDTH[name] == model.feature_dim
    blocks = preset.vit["depth"]
    assert sum(k.startswith("blocks.") for k in layout) == 14 * blocks  # 14 tensors per block
    count = sum(torch.Size(s).numel() for s in layout.values())
    if name in CARD_PARAMETERS:
        published, tolerance = CARD_PARAMETERS[name]
        assert abs(count - published) / published < tolerance, count


@pytest.mark.parametrize("name", PUBLISHED)
def test_reduced_variant_keeps_every_name_of_the_first_blocks(name: str) -> None:
    full = expected_layout(get_preset(name).vit)
    reduced = expected_layout(get_preset(name).reduced().vit)
    kept = {k for k in full if not k.startswith("blocks.") or int(k.split(".")[1]) < 2}
    assert set(reduced) == kept


@pytest.mark.parametrize("name", PUBLISHED)
def test_our_vit_gives_timms_outputs_on_timms_weights(name: str) -> None:
    """The reference file holds timm 1.0.31's reduced networks (built with the model cards'
    arguments, weights drawn at random) and their outputs on one image."""
    tensors = read_safetensors(REFERENCE)
    preset = get_preset(name).reduced()
    model = build_vit(preset.vit).eval()
    model.load_state_dict(reference_weights(name), strict=True)
    x = tensors["image"].permute(0, 3, 1, 2).float() / 255 - 0.5
    with torch.no_grad():
        torch.testing.assert_close(model(x), tensors[f"{name}/output"], atol=1e-5, rtol=1e-5)
        if preset.dynamic_img_size:  # the position embedding interpolated as timm does
            small = x[:, :, :112, :112]
            torch.testing.assert_close(
                model(small), tensors[f"{name}/output_112"], atol=1e-5, rtol=1e-5
            )
        else:
            with pytest.raises(ValueError, match="224 px"):
                model(x[:, :, :112, :112])


# ---- strict loading and refusals -----------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED)
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_published_layout_loads_strictly_and_gives_the_feature_width(
    tmp_path: Path, name: str, suffix: str
) -> None:
    preset = get_preset(name).reduced()
    path = write_weights(tmp_path / f"weights{suffix}", reference_weights(name))
    model, base = load_base_backbone(path, preset.vit, preset.name)
    assert base.sha256 and base.path == str(path.resolve()) and base.size == path.stat().st_size
    features = model(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, preset.feature_dim)
    assert preset.feature_dim == CARD_WIDTH[name] // get_preset(name).embed_dim * 16


@pytest.mark.parametrize("name", PUBLISHED)
def test_each_preset_refuses_a_truncated_or_foreign_file(tmp_path: Path, name: str) -> None:
    preset = get_preset(name).reduced()
    good = write_weights(tmp_path / "good.bin", reference_weights(name))
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    with pytest.raises(CheckpointError, match=rf"encoder\.preset {name}-reduced: .*truncated\.bin"):
        load_base_backbone(truncated, preset.vit, preset.name)
    other = PUBLISHED[(PUBLISHED.index(name) + 1) % len(PUBLISHED)]
    foreign = write_weights(tmp_path / f"{other}.safetensors", reference_weights(other))
    with pytest.raises(CheckpointError) as caught:
        load_base_backbone(foreign, preset.vit, preset.name)
    text = str(caught.value)
    assert f"encoder.preset {name}-reduced: " in text and f"{other}.safetensors" in text
    assert re.search(r"\d+ (missing key|unexpected key|key\(s\) of another shape)", text), text


def test_truncated_and_foreign_files_are_refused_naming_the_preset(tmp_path: Path) -> None:
    uni = get_preset("uni").reduced()
    good = write_weights(tmp_path / "uni.bin", reference_weights("uni"))
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"encoder\.preset uni-reduced: .*truncated\.bin"):
        load_base_backbone(truncated, uni.vit, uni.name)
    half = tmp_path / "truncated.safetensors"
    write_weights(tmp_path / "full.safetensors", reference_weights("uni"))
    half.write_bytes((tmp_path / "full.safetensors").read_bytes()[:5000])
    with pytest.raises(
        CheckpointError, match=r"uni-reduced: .*truncated\.safetensors .*safetensors"
    ):
        load_base_backbone(half, uni.vit, uni.name)

    # Another preset's file: UNI2-h has registers UNI lacks and a packed SwiGLU of other shape.
    foreign = write_weights(tmp_path / "uni2.safetensors", reference_weights("uni2_h"))
    with pytest.raises(CheckpointError) as caught:
        load_base_backbone(foreign, uni.vit, uni.name, hint="download it")
    text = str(caught.value)
    assert "encoder.preset uni-reduced" in text and "uni2.safetensors" in text
    assert re.search(r"1 unexpected key\(s\), first \['reg_token'\]", text)
    assert re.search(r"\d+ key\(s\) of another shape, first \[.*mlp\.fc1\.weight", text)
    assert text.endswith("Download it")

    # A ResNet state dict: every key missing, every key unexpected, both counted.
    resnet = tmp_path / "resnet.pth"
    torch.save(build_encoder("resnet_mini").backbone.state_dict(), resnet)
    with pytest.raises(CheckpointError) as caught:
        load_base_backbone(resnet, uni.vit, uni.name)
    counts = re.search(r"(\d+) missing key\(s\).*; (\d+) unexpected key\(s\)", str(caught.value))
    assert counts is not None
    assert int(counts[1]) == len(expected_layout(uni.vit)) and int(counts[2]) > 20

    with pytest.raises(CheckpointError, match="not found; download"):
        load_base_backbone(tmp_path / "absent.bin", uni.vit, uni.name, hint="download it")


def test_safetensors_round_trip_and_bad_header(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4).to(torch.bfloat16),
        "empty": torch.zeros(0, 2),
    }
    write_safetensors(tmp_path / "t.safetensors", tensors, {"note": "x"})
    back = read_safetensors(tmp_path / "t.safetensors")
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="bad.safetensors cannot be read as safetensors"):
        read_safetensors(tmp_path / "bad.safetensors")


# ---- the encoder file ------------------------------------------------------------------------------


def test_encoder_file_names_the_base_weights_and_rebuilds_the_network(tmp_path: Path) -> None:
    preset = get_preset("virchow2").reduced()
    weights = write_weights(tmp_path / "model.safetensors", reference_weights("virchow2"))
    model = build_preset_encoder(preset, str(weights), seed=0, proj_dim=32)
    out = tmp_path / "encoder.pt"
    save_encoder_file(out, model, source=str(weights), source_sha256=model.base.sha256)
    payload = torch.load(out, weights_only=True)
    assert payload["backbone"] == {} and payload["preset"] == "virchow2-reduced"
    assert payload["base"]["sha256"] == model.base.sha256
    assert payload["mpp"] == [2.0, 1.0, 0.5, 0.25]

    loaded, meta = load_encoder_file(out)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.features(x), model.eval().features(x))
    assert meta.preset == "virchow2-reduced" and meta.feature_dim == preset.feature_dim
    assert meta.mean == preset.mean and meta.base["path"] == str(weights.resolve())
    assert read_encoder_meta(out).weights_sha256 == meta.weights_sha256

    # The base file changed since: refused, with both hashes' starts and what to do.
    state = reference_weights("virchow2")
    state["norm.weight"] = state["norm.weight"] + 1
    write_weights(weights, state)
    with pytest.raises(CheckpointError, match=r"encoder\.pt: .*changed since.*round 0"):
        load_encoder_file(out)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        load_encoder_file(out)


def test_init_encoder_with_a_preset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = get_preset("vit_tiny_test")
    weights = write_weights(tmp_path / "tiny.safetensors", build_vit(tiny.vit).state_dict())
    out = tmp_path / "r0.pt"
    args = ["init-encoder", "--preset", "vit_tiny_test", "--weights", str(weights), "--seed", "1"]
    assert main([*args, "--out", str(out)]) == 0
    model, meta = load_encoder_file(out)
    assert meta.preset == "vit_tiny_test" and meta.feature_dim == 96 and meta.patch_size == 32
    assert meta.base["sha256"] and meta.source == str(weights.resolve())
    assert model.features(torch.rand(3, 3, 32, 32)).shape == (3, 96)
    # Random weights are for the test preset only; a published one needs its file.
    assert main(["init-encoder", "--preset", "vit_tiny_test", "--out", str(tmp_path / "r.pt")]) == 0
    assert "RANDOMLY INITIALISED" in caplog.text
    code = main(["init-encoder", "--preset", "uni", "--out", str(tmp_path / "uni.pt")])
    assert code == 2 and not (tmp_path / "uni.pt").exists()
    assert "pytorch_model.bin from https://huggingface.co/MahmoodLab/UNI" in capsys.readouterr().err


# ---- resolution and tile size --------------------------------------------------------------------


def test_tiling_is_checked_against_the_preset() -> None:
    uni = get_preset("uni")
    assert check_tiling(uni, 224, 0.5, False).problems == []
    assert check_tiling(uni, 224, 0.52, False).problems == []  # within 10 %
    wrong = check_tiling(uni, 224, 2.0, False)
    assert len(wrong.problems) == 1 and "tile.target_mpp to 0.5" in wrong.problems[0]
    allowed = check_tiling(uni, 224, 2.0, True)
    assert allowed.problems == [] and "allow_other_mpp" in allowed.notes[0]
    assert check_tiling(get_preset("virchow2"), 224, 1.0, False).problems == []  # mixed mags
    assert "dynamic image size" in check_tiling(uni, 256, 0.5, False).notes[0]
    fixed = check_tiling(get_preset("h_optimus_0"), 256, 0.5, False)
    assert "tile.patch_size to 224" in fixed.problems[0]

    config = {
        "encoder": {"preset": "uni", "weights": "", "allow_other_mpp": False, "arch": "x"},
        "tile": {"patch_size": 224, "target_mpp": 0.5},
        "finetune": {"adapter": "none"},
        "rounds": 0,
    }
    assert "huggingface.co/MahmoodLab/UNI" in workflow_problems(config).problems[0]
    config["encoder"] = {**config["encoder"], "preset": "", "arch": "resnet18"}
    config.update(rounds=2, finetune={"adapter": "lora"})
    assert "finetune.adapter lora needs" in workflow_problems(config).problems[0]
    with pytest.raises(ConfigError, match="not a known preset"):
        get_preset("uni3")


def test_extraction_refuses_another_resolution_unless_allowed(test_slides, tmp_path) -> None:  # noqa: ANN001
    slide = str(test_slides / "cmu-1-small-region.svs")
    tiles = tmp_path / "tiles.h5"
    coords = np.array([[0, 0], [64, 0], [128, 64]])
    attrs = dict(
        slide_id="cmu1", slide_path=slide, patch_size=32, target_mpp=0.998, mpp=0.499,
        mpp_source="metadata", level=0, level_downsample=1.0, read_size=64, step_level0=64,
        failed=False, error="",
    )  # fmt: skip
    write_tiles(tiles, coords, attrs)
    settings = ExtractSettings(workers=0, device="cpu", threads=1)
    for allow in (False, True):
        encoder = tmp_path / f"encoder{allow}.pt"
        model = build_preset_encoder("vit_tiny_test", "", 0, 16, allow_other_mpp=allow)
        save_encoder_file(encoder, model, source="random:0")
        out = tmp_path / f"features{allow}.h5"
        if not allow:
            with pytest.raises(
                ConfigError, match=r"trained at 2 um/px.*tiled at 0\.998.*allow_other"
            ):
                extract_slide(slide, "cmu1", str(tiles), str(encoder), 0, str(out), settings)
            continue
        extract_slide(slide, "cmu1", str(tiles), str(encoder), 0, str(out), settings)
        features, _, _ = read_features(out)
        assert features.shape == (3, 96) and np.isfinite(features).all()


def test_every_preset_is_documented() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "foundation.md").read_text()
    for name, preset in PRESETS.items():
        assert f"`{name}`" in docs, name
        if preset.card:
            assert preset.card in docs
            assert all(f in docs for f in preset.weight_files)


def test_the_comparison_runs_frozen_and_adapters_as_methods() -> None:
    from hnm.compare.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "config" / "compare_foundation.yaml")
    assert set(spec.methods) == {"frozen", "lora_rounds"} and spec.reference == "frozen"
    assert [Path(f).name for f in spec.configfiles] == ["paper.yaml", "foundation.yaml"]
    frozen, adapted = spec.run_config(0, "frozen"), spec.run_config(0, "lora_rounds")
    assert frozen["encoder"]["preset"] == adapted["encoder"]["preset"] == "uni"
    assert frozen["rounds"] == 0 and adapted["rounds"] == 5
    assert adapted["finetune"]["adapter"] == "lora"
