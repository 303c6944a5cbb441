"""Encoders, weight files in every supported layout, and the encoder file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from hnm.cli import main
from hnm.core.errors import CheckpointError, ConfigError
from hnm.encoders import (
    build_encoder,
    load_encoder_file,
    load_weights,
    read_encoder_meta,
    save_encoder_file,
    weights_digest,
)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _source(norm: str = "batch", seed: int = 7):
    """An encoder whose weights differ from a seed-0 one, to load into a seed-0 target."""
    return build_encoder("resnet_mini", {"norm": norm}, seed=seed)


def _target(norm: str = "batch"):
    return build_encoder("resnet_mini", {"norm": norm}, seed=0)


# ---- architectures -------------------------------------------------------------------------------


def test_parameter_counts_match_torchvision_trunks():
    # torchvision resnet18/50 have 11,689,512 / 25,557,032 parameters including fc (d*1000 + 1000).
    for arch, total, dim in (("resnet18", 11_689_512, 512), ("resnet50", 25_557_032, 2048)):
        model = build_encoder(arch)
        trunk = sum(p.numel() for p in model.backbone.parameters())
        assert trunk == total - (dim * 1000 + 1000)
        assert model.feature_dim == dim


def test_torchvision_key_names():
    keys18 = set(build_encoder("resnet18").backbone.state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer4.1.bn2.bias",
    } <= keys18
    assert not any(k.startswith(("fc.", "layer1.0.downsample")) for k in keys18)
    keys50 = set(build_encoder("resnet50").backbone.state_dict())
    assert {
        "layer1.0.downsample.0.weight",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.running_var",
    } <= keys50


def test_shapes_and_projection_head():
    model = build_encoder("resnet_mini").eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.features(x).shape == (2, 128)
    assert model(x).shape == (2, 256)
    assert [type(m).__name__ for m in model.head] == ["Linear", "ReLU", "Linear"]
    assert model.head[0].weight.shape == (128, 128)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_encoder("resnet_mini", seed=3).state_dict()
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert _same(a, build_encoder("resnet_mini", seed=3).state_dict())
    assert not torch.equal(
        a["backbone.conv1.weight"],
        build_encoder("resnet_mini", seed=4).state_dict()["backbone.conv1.weight"],
    )


def test_instance_norm_variant_has_no_norm_parameters():
    keys = build_encoder("resnet_mini", {"norm": "instance"}).backbone.state_dict()
    assert not any(".bn" in f".{k}" or "downsample.1" in k for k in keys)


def test_unknown_arch_and_missing_optional_packages_are_clear():
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_encoder("resnet19")
    # torchvision/timm are absent in CI; where present, they build instead.
    for arch, package in (("torchvision:resnet18", "torchvision"), ("timm:resnet18", "timm")):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(ConfigError, match=f"needs the '{package}' package"):
                build_encoder(arch)


# ---- weight layouts ------------------------------------------------------------------------------


def _layouts(tmp_path: Path):
    """(name, file, norm, expect_head) for every layout, built from one source encoder per norm."""
    made = []
    for norm in ("batch", "instance"):
        src = _source(norm)
        bb = src.backbone.state_dict()
        head = {
            "0.weight": src.head[0].weight,
            "0.bias": src.head[0].bias,
            "2.weight": src.head[2].weight,
            "2.bias": src.head[2].bias,
        }
        classifier = {"fc.weight": torch.randn(1000, 128), "fc.bias": torch.randn(1000)}
        simclr_fc = {f"fc.{k}": v for k, v in head.items()}
        layouts = {
            "plain": ({**bb, **classifier}, False),
            "torchvision_module_prefix": (
                {
                    "state_dict": {f"module.{k}": v for k, v in {**bb, **classifier}.items()},
                    "epoch": 3,
                },
                False,
            ),
            "timm_model": ({"model": {**bb, **classifier}, "args": None}, False),
            "compiled": ({f"_orig_mod.{k}": v for k, v in bb.items()}, False),
            "its2clr_net": (
                {
                    "net": {f"module.resnet.{k}": v for k, v in {**bb, **simclr_fc}.items()},
                    "optimizer": {"state": {}, "param_groups": []},
                },
                True,
            ),
            "its2clr_state_dict": (
                {"state_dict": {f"module.resnet.{k}": v for k, v in {**bb, **simclr_fc}.items()}},
                True,
            ),
            "moco": (
                {
                    "state_dict": {
                        **{f"module.encoder_q.{k}": v for k, v in bb.items()},
                        # MoCo v2's 128-d MLP head does not fit our 256-d head: dropped, with a warning.
                        "module.encoder_q.fc.0.weight": head["0.weight"],
                        "module.encoder_q.fc.0.bias": head["0.bias"],
                        "module.encoder_q.fc.2.weight": torch.randn(128, 128),
                        "module.encoder_q.fc.2.bias": torch.randn(128),
                        **{f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in bb.items()},
                        "module.queue": torch.randn(128, 16),
                        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
                    },
                    "arch": "resnet",
                },
                False,
            ),
            "dsmil": (
                _dsmil_layout(src)
                | {
                    "l1.weight": head["0.weight"],
                    "l1.bias": head["0.bias"],
                    "l2.weight": head["2.weight"],
                    "l2.bias": head["2.bias"],
                },
                True,
            ),
            "hnm_state_dict": (src.state_dict(), True),
        }
        for name, (payload, expect_head) in layouts.items():
            path = tmp_path / f"{name}_{norm}.pth"
            torch.save(payload, path)
            made.append((f"{name}/{norm}", path, norm, expect_head, src))
    return made


def _dsmil_layout(src) -> dict[str, torch.Tensor]:
    # DSMIL's SimCLR keeps the trunk as nn.Sequential(*children[:-1]): keys by child position.
    index = {name: i for i, (name, _) in enumerate(src.backbone.named_children())}
    out = {}
    for key, value in src.backbone.state_dict().items():
        child, _, rest = key.partition(".")
        out[f"features.{index[child]}.{rest}"] = value
    return out


def test_every_layout_loads_into_the_right_modules(tmp_path):
    for name, path, norm, expect_head, src in _layouts(tmp_path):
        model = _target(norm)
        head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
        report = load_weights(path, model)
        assert _same(model.backbone.state_dict(), src.backbone.state_dict()), name
        if expect_head:
            assert report.head_loaded, name
            assert _same(model.head.state_dict(), src.head.state_dict()), name
        else:
            assert not report.head_loaded, name
            assert _same(model.head.state_dict(), head_before), name


def test_dropped_keys_are_named(tmp_path, caplog):
    src = _source()
    torch.save(
        {
            **src.backbone.state_dict(),
            "fc.weight": torch.randn(10, 128),
            "fc.bias": torch.randn(10),
        },
        tmp_path / "tv.pth",
    )
    with caplog.at_level(logging.INFO):
        report = load_weights(tmp_path / "tv.pth", _target())
    assert report.layout == "plain"
    assert sorted(report.dropped["classifier (or single linear head)"]) == ["fc.bias", "fc.weight"]
    assert "fc.weight" in caplog.text


def test_head_never_and_require(tmp_path):
    src = _source()
    torch.save(src.state_dict(), tmp_path / "ours.pth")
    model = _target()
    report = load_weights(tmp_path / "ours.pth", model, load_head="never")
    assert not report.head_loaded and not _same(model.head.state_dict(), src.head.state_dict())
    torch.save(src.backbone.state_dict(), tmp_path / "bb.pth")
    with pytest.raises(CheckpointError, match="no projection head"):
        load_weights(tmp_path / "bb.pth", _target(), load_head="require")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth not found"):
        load_weights(tmp_path / "nope.pth", _target())


def test_truncated_and_foreign_files_are_named(tmp_path):
    src = _source()
    good = tmp_path / "good.pth"
    torch.save(src.backbone.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth cannot be read"):
        load_weights(truncated, _target())
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth cannot be read"):
        load_weights(text, _target())
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match=r"nostate.pth: no state dict found.*'epoch'"):
        load_weights(tmp_path / "nostate.pth", _target())


def test_key_mismatches_name_the_keys(tmp_path):
    # A resnet18 checkpoint into resnet_mini: other shapes and missing/unexpected blocks.
    torch.save(build_encoder("resnet18").backbone.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(
        CheckpointError,
        match=r"r18.pth \(plain layout\) does not fit.*unexpected key\(s\), first \[.layer1.1",
    ):
        load_weights(tmp_path / "r18.pth", _target())
    state = dict(_source().backbone.state_dict())
    state["layer9.weight"] = torch.zeros(1)
    del state["layer3.0.conv2.weight"]
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as info:
        load_weights(tmp_path / "odd.pth", _target())
    assert "odd.pth" in str(info.value)
    assert "layer9.weight" in str(info.value) and "layer3.0.conv2.weight" in str(info.value)


def test_instance_norm_weights_into_batch_norm_model_hint_norm(tmp_path):
    torch.save(_source("instance").backbone.state_dict(), tmp_path / "in.pth")
    with pytest.raises(CheckpointError, match="norm=instance"):
        load_weights(tmp_path / "in.pth", _target("batch"))


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    src = _source()
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in src.backbone.state_dict().items()},
        tmp_path / "half.pth",
    )
    model = _target()
    load_weights(tmp_path / "half.pth", model)
    assert model.backbone.conv1.weight.dtype == torch.float32
    assert torch.allclose(model.backbone.conv1.weight, src.backbone.conv1.weight, atol=1e-2)


# ---- encoder file --------------------------------------------------------------------------------


def test_encoder_file_round_trip_with_training_state(tmp_path):
    model = _source()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler.step()
    path = tmp_path / "r3" / "encoder.pt"
    save_encoder_file(
        path,
        model,
        source="w.pth",
        source_sha256="ab" * 32,
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        epoch=15,
        round=3,
        extra={"note": "x"},
    )
    loaded, meta = load_encoder_file(path)
    assert _same(loaded.state_dict(), model.state_dict())
    assert not loaded.training
    assert (meta.arch, meta.epoch, meta.round, meta.source, meta.feature_dim, meta.patch_size) == (
        "resnet_mini",
        15,
        3,
        "w.pth",
        128,
        224,
    )
    assert meta.arch_kwargs == {"norm": "batch"}
    assert meta.extra == {"note": "x"}
    assert meta.weights_sha256 == weights_digest(model.backbone)
    assert read_encoder_meta(path).weights_sha256 == meta.weights_sha256
    # The optimizer and scheduler continue exactly where they were.
    opt2 = torch.optim.SGD(loaded.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt2.load_state_dict(meta.optimizer)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    sched2.load_state_dict(meta.scheduler)
    assert sched2.last_epoch == 1
    momentum = next(iter(opt2.state.values()))["momentum_buffer"]
    assert torch.equal(momentum, next(iter(optimizer.state.values()))["momentum_buffer"])
    assert not list(tmp_path.glob("r3/.*tmp*"))


def test_weights_digest_depends_on_values_only():
    a, b = _source(seed=1), _source(seed=1)
    assert weights_digest(a.backbone) == weights_digest(b.backbone)
    with torch.no_grad():
        b.backbone.conv1.weight[0, 0, 0, 0] += 1e-3
    assert weights_digest(a.backbone) != weights_digest(b.backbone)
    # The head is not part of the backbone digest.
    with torch.no_grad():
        a.head[0].weight.zero_()
    assert weights_digest(a.backbone) == weights_digest(_source(seed=1).backbone)


def test_encoder_file_errors_name_the_file(tmp_path):
    path = tmp_path / "encoder.pt"
    save_encoder_file(path, _source(), source="random:7")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="torn.pt cannot be read"):
        load_encoder_file(torn)
    torch.save(_source().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt is not an hnm encoder file"):
        load_encoder_file(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        load_encoder_file(tmp_path / "missing.pt")


def test_an_encoder_file_is_also_accepted_as_weights(tmp_path):
    src = _source()
    save_encoder_file(tmp_path / "e.pt", src, source="random:7")
    model = _target()
    report = load_weights(tmp_path / "e.pt", model)
    assert report.layout == "hnm-encoder-file" and report.head_loaded
    assert _same(model.state_dict(), src.state_dict())


# ---- init-encoder CLI ----------------------------------------------------------------------------


def test_init_encoder_random(tmp_path, caplog):
    out = tmp_path / "r0" / "encoder.pt"
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "init-encoder",
                    "--arch",
                    "resnet_mini",
                    "--weights",
                    "",
                    "--seed",
                    "5",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    assert "RANDOMLY INITIALISED with seed 5" in caplog.text
    model, meta = load_encoder_file(out)
    assert meta.source == "random:5" and meta.epoch == 0 and meta.round == 0
    assert _same(
        model.state_dict(), build_encoder("resnet_mini", {"norm": "batch"}, seed=5).state_dict()
    )


def test_init_encoder_from_weights(tmp_path):
    src = _source("instance")
    torch.save(
        {"net": {f"module.resnet.{k}": v for k, v in src.backbone.state_dict().items()}},
        tmp_path / "its2clr.pth",
    )
    out = tmp_path / "encoder.pt"
    assert (
        main(
            [
                "init-encoder",
                "--arch",
                "resnet_mini",
                "--norm",
                "instance",
                "--weights",
                str(tmp_path / "its2clr.pth"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model, meta = load_encoder_file(out)
    assert meta.source == str(tmp_path / "its2clr.pth") and len(meta.source_sha256) == 64
    assert _same(model.backbone.state_dict(), src.backbone.state_dict())


def test_init_encoder_bad_weights_exit_2(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"\x00" * 10)
    code = main(
        [
            "init-encoder",
            "--arch",
            "resnet_mini",
            "--weights",
            str(tmp_path / "bad.pth"),
            "--out",
            str(tmp_path / "e.pt"),
        ]
    )
    assert code == 2
    assert "bad.pth" in capsys.readouterr().err
    assert not (tmp_path / "e.pt").exists()


def test_safetensors_file_gives_a_named_error_or_loads(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"w.safetensors .*safetensors"):
        load_weights(bad, _target())
