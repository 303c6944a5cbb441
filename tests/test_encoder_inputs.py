"""What the encoder is fed: channel order and normalisation, chosen from the weights' layout,
recorded in the encoder file, and applied by extraction and by the SimCLR augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hnm.cli import main
from hnm.contrastive.augment import SimCLRAugment
from hnm.encoders import build_encoder, load_encoder_file, save_encoder_file
from hnm.encoders.registry import IMAGENET_MEAN, IMAGENET_STD
from hnm.extract.settings import ExtractSettings
from hnm.extract.stage import extract_slide
from hnm.io.h5io import read_features, write_tiles
from hnm.io.patches import PatchReader
from tests.test_extract import _attrs, _coords

SLIDE = "cmu-1-small-region.svs"


def _its2clr_checkpoint(path, src) -> None:
    """ItS2CLR's / the HNM authors' SimCLR file: {"net": module.resnet.* with the head as fc.0/fc.2}."""
    head = {f"fc.{k}": v for k, v in src.head.state_dict().items()}
    state = {**src.backbone.state_dict(), **head}
    torch.save({"net": {f"module.resnet.{k}": v for k, v in state.items()}}, path)


def _init(tmp_path, weights, *extra: str):
    out = tmp_path / "encoder.pt"
    args = ["init-encoder", "--arch", "resnet18", "--norm", "instance", "--out", str(out)]
    assert main([*args, *(["--weights", str(weights)] if weights else []), *extra]) == 0
    return load_encoder_file(out)


def test_authors_checkpoint_is_fed_bgr_unnormalised(test_slides, tmp_path) -> None:
    """Their ResNet-18 (InstanceNorm) in their key layout loads, the encoder file says BGR in
    [0, 1], and extraction's features equal the network fed BGR/255 patches by hand."""
    src = build_encoder("resnet18", {"norm": "instance"}, seed=5)
    _its2clr_checkpoint(tmp_path / "authors.pth", src)
    model, meta = _init(tmp_path, tmp_path / "authors.pth")
    assert meta.channel_order == "bgr" and meta.mean == (0, 0, 0) and meta.std == (1, 1, 1)

    slide = str(test_slides / SLIDE)
    tiles = tmp_path / "tiles.h5"
    write_tiles(tiles, _coords(), _attrs(slide))
    out = tmp_path / "features.h5"
    settings = ExtractSettings(batch_size=8, workers=0, device="cpu", decode="cpu")
    extract_slide(slide, "cmu1", str(tiles), str(tmp_path / "encoder.pt"), 0, str(out), settings)
    features, _, _ = read_features(out)

    rgb = PatchReader(slide, _coords(), _attrs(slide)).read(list(range(len(_coords()))))
    bgr = torch.from_numpy(rgb[..., ::-1].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.inference_mode():
        expected = src.backbone.eval()(bgr).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    # and not what RGB would have given: the channel order matters for these weights
    with torch.inference_mode():
        as_rgb = src.backbone(bgr.flip(1)).numpy()
    assert np.abs(features - as_rgb).max() > 1e-2


def test_input_follows_the_layout_or_the_settings(tmp_path) -> None:
    src = build_encoder("resnet18", {"norm": "instance"}, seed=5)
    dsmil = {
        f"features.{i}.{k}": v
        for i, (_, child) in enumerate(src.backbone.named_children())
        for k, v in child.state_dict().items()
    }
    torch.save(dsmil, tmp_path / "dsmil.pth")
    _, meta = _init(tmp_path, tmp_path / "dsmil.pth")  # DSMIL's SimCLR: PIL RGB, ToTensor only
    assert meta.channel_order == "rgb" and meta.mean == (0, 0, 0) and meta.std == (1, 1, 1)
    _, meta = _init(tmp_path, None)  # random init: our own convention
    assert meta.channel_order == "rgb" and meta.mean == IMAGENET_MEAN
    _its2clr_checkpoint(tmp_path / "authors.pth", src)
    _, meta = _init(
        tmp_path, tmp_path / "authors.pth", "--channel-order", "bgr", "--normalize", "imagenet"
    )
    # per INPUT channel: BGR with ImageNet statistics reverses the RGB-ordered tuples
    assert meta.mean == tuple(reversed(IMAGENET_MEAN)) and meta.std == tuple(reversed(IMAGENET_STD))


def test_encoder_file_keeps_the_input_through_a_round_trip(tmp_path) -> None:
    src = build_encoder("resnet18", {"norm": "instance"}, seed=5)
    _its2clr_checkpoint(tmp_path / "authors.pth", src)
    model, _ = _init(tmp_path, tmp_path / "authors.pth")
    save_encoder_file(tmp_path / "next.pt", model, source="x", round=1, epoch=6)
    _, meta = load_encoder_file(tmp_path / "next.pt")
    assert meta.channel_order == "bgr" and meta.mean == (0, 0, 0)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_augmentation_feeds_the_encoders_channel_order(order: str) -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    augment = SimCLRAugment(8, mean, std, channel_order=order)
    views = torch.rand(2, 3, 8, 8)
    expected = views.flip(1) if order == "bgr" else views
    expected = (expected - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(augment.normalise(views), expected)


def test_instance_norm_on_patches_too_small_is_refused() -> None:
    from hnm.core.errors import ConfigError
    from hnm.encoders.inputs import check_patch_size

    with pytest.raises(ConfigError, match="32 px patches give 1 x 1.*tile.patch_size >= 33"):
        check_patch_size("resnet_mini", {"norm": "instance"}, 32)
    check_patch_size("resnet_mini", {"norm": "instance"}, 64)  # 2 x 2: fine
    check_patch_size("resnet_mini", {"norm": "batch"}, 32)  # BatchNorm normalises over the batch
    # what it guards against: torch's own error, deep in the forward pass
    net = build_encoder("resnet_mini", {"norm": "instance"}, seed=0).backbone.eval()
    with pytest.raises(ValueError, match="more than 1 spatial element"), torch.inference_mode():
        net(torch.rand(2, 3, 32, 32))
