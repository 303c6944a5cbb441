"""SimCLR pretraining: the NT-Xent loss by hand, epoch plans, and real runs on tiny tiled TIFFs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from hnm.cli import main
from hnm.core.errors import HnmError, SlideError
from hnm.encoders import load_encoder_file
from hnm.encoders.weights import read_checkpoint
from hnm.io.h5io import level0_tiles_attrs, read_features, write_tiles
from hnm.pretrain.data import plan_epoch
from hnm.pretrain.ntxent import nt_xent_loss
from hnm.pretrain.settings import PretrainSettings
from hnm.pretrain.train import pretrain

PATCH = 32
# slide -> (split, tiling failed); the val slide and the failed one must never be read.
SLIDES = {
    "t1": ("train", False),
    "t2": ("train", False),
    "t3": ("train", False),
    "t4": ("train", False),
    "v1": ("val", False),
    "bad": ("train", True),
}
SETTINGS = PretrainSettings(
    epochs=2, batch_size=8, lr=0.01, cosine_after=1, max_patches_per_epoch=0, workers=0, seed=5
)


# ---------------------------------------------------------------------------------- NT-Xent loss


def test_nt_xent_two_patches_by_hand() -> None:
    """Two patches a, b with views (a1, b1, a2, b2) on unit axes: every view's partner has
    similarity 1 and its two negatives 0, so each term is -log(e^(1/T) / (e^(1/T) + 2))."""
    projections = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    for temperature in (1.0, 0.5):
        expected = math.log(1.0 + 2.0 * math.exp(-1.0 / temperature))
        loss = nt_xent_loss(projections, temperature)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Length does not matter (cosine similarity): scaling rows changes nothing.
    scaled = projections * torch.tensor([[3.0], [0.5], [2.0], [7.0]])
    assert nt_xent_loss(scaled, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)


def test_nt_xent_asymmetric_by_hand() -> None:
    """a1 = (1, 0), b1 = (0, 1), a2 = (0.6, 0.8), b2 = (0, 1), T = 1. Similarities:
    a1.b1 = 0, a1.a2 = 0.6, a1.b2 = 0; b1.a2 = 0.8, b1.b2 = 1; a2.b2 = 0.8."""
    projections = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    e = math.exp
    terms = [
        -math.log(e(0.6) / (e(0.0) + e(0.6) + e(0.0))),  # a1: partner a2
        -math.log(e(1.0) / (e(0.0) + e(0.8) + e(1.0))),  # b1: partner b2
        -math.log(e(0.6) / (e(0.6) + e(0.8) + e(0.8))),  # a2: partner a1
        -math.log(e(1.0) / (e(0.0) + e(1.0) + e(0.8))),  # b2: partner b1
    ]
    assert nt_xent_loss(projections, 1.0).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_nt_xent_gradient_is_finite_and_pulls_partners_together() -> None:
    projections = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = nt_xent_loss(projections, 0.5)
    loss.backward()
    assert torch.isfinite(projections.grad).all()
    with torch.no_grad():
        stepped = projections - 0.5 * projections.grad
    assert nt_xent_loss(stepped, 0.5) < loss
    with pytest.raises(ValueError):
        nt_xent_loss(torch.ones(3, 2))


# ------------------------------------------------------------------------------------ epoch plans


def test_epoch_plan_is_a_seeded_permutation() -> None:
    batches = plan_epoch(21, epoch=3, seed=1, batch_size=8)
    assert [len(b) for b in batches] == [8, 8, 5]
    assert sorted(np.concatenate(batches)) == list(range(21))
    again = plan_epoch(21, epoch=3, seed=1, batch_size=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = plan_epoch(21, epoch=4, seed=1, batch_size=8)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))
    # A single leftover patch has no negative: dropped. Caps on patches and steps.
    assert [len(b) for b in plan_epoch(17, 0, 0, 8)] == [8, 8]
    capped = plan_epoch(100, 0, 0, 8, max_patches=20)
    assert [len(b) for b in capped] == [8, 8, 4] and len(set(np.concatenate(capped))) == 20
    assert len(plan_epoch(100, 0, 0, 8, max_steps=2)) == 2


# ---------------------------------------------------------------------------------- real runs


def _write_slide(path: Path, seed: int) -> np.ndarray:
    """A 64 x 128 px tiled TIFF of noise (2 x 4 patches of 32 px)."""
    image = np.random.default_rng(seed).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(16, 16), photometric="rgb", compression="zlib")
    ys, xs = np.mgrid[0:64:PATCH, 0:128:PATCH]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    (root / "tiles").mkdir()
    rows = []
    for seed, (slide, (split, failed)) in enumerate(SLIDES.items()):
        path = root / f"{slide}.tiff"
        coords = _write_slide(path, seed)
        write_tiles(
            root / "tiles" / f"{slide}.h5",
            coords[:0] if failed else coords,
            level0_tiles_attrs(slide, path, PATCH, error="cannot open" if failed else ""),
        )
        if split == "val":  # a val slide's pixels would make every read fail if it were read
            path.write_bytes(b"not a slide")
        rows.append(
            {
                "slide_id": slide,
                "path": str(path),
                "label": seed % 2,
                "split": split,
                "mpp": 1.0,
                "annotation": "",
            }
        )
    pd.DataFrame(rows).to_csv(root / "sheet.tsv", sep="\t", index=False)
    main(["init-encoder", "--seed", "0", "--out", str(root / "init.pt")])
    return {
        "root": root,
        "sheet": root / "sheet.tsv",
        "tiles": sorted((root / "tiles").glob("*.h5")),
        "encoder": root / "init.pt",
    }


def run(
    cohort: dict[str, Path],
    out: Path,
    checkpoints: Path | None,
    settings: PretrainSettings = SETTINGS,
    **kwargs,
) -> dict:  # noqa: ANN003
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    return pretrain(
        sheet,
        cohort["tiles"],
        cohort["encoder"],
        out,
        checkpoints,
        settings,
        torch.device("cpu"),
        threads=1,
        **kwargs,
    )


def test_two_epochs_train_the_encoder_and_write_a_round0_file(cohort, tmp_path) -> None:  # noqa: ANN001
    summary = run(cohort, tmp_path / "r0" / "encoder.pt", tmp_path / "ckpt")
    assert summary["training_slides"] == 4 and summary["training_patches"] == 32
    assert summary["patches"] == [32, 32] and len(summary["epoch_seconds"]) == 2
    assert all(np.isfinite(summary["losses"]))
    before, _ = load_encoder_file(cohort["encoder"])
    after, meta = load_encoder_file(tmp_path / "r0" / "encoder.pt")
    for name, tensor in before.state_dict().items():
        if name.endswith("conv1.weight") or name.startswith("head."):
            assert not torch.equal(tensor, after.state_dict()[name]), name
    # Round 0, epoch 0 and no optimizer state, like init_encoder's file: fine-tuning starts its
    # schedule and its SGD state afresh from it.
    assert (meta.round, meta.epoch, meta.optimizer, meta.scheduler) == (0, 0, None, None)
    assert meta.extra["pretrain"]["epochs"] == 2 and meta.extra["seed"] == 0
    assert meta.extra["pretrain"]["initial_source"] == "random:0"
    assert set(read_checkpoint(tmp_path / "r0" / "encoder.pt")) == set(
        read_checkpoint(cohort["encoder"])
    )
    assert not (tmp_path / "ckpt" / "state.pt").exists()  # cleared once the output exists


def test_resume_equals_uninterrupted(cohort, tmp_path, caplog) -> None:  # noqa: ANN001
    run(cohort, tmp_path / "straight.pt", None)

    class Killed(Exception):
        pass

    def kill_after_first(done: int) -> None:
        if done == 1:
            raise Killed

    with pytest.raises(Killed):
        run(cohort, tmp_path / "resumed.pt", tmp_path / "ckpt", on_epoch_end=kill_after_first)
    assert not (tmp_path / "resumed.pt").exists() and (tmp_path / "ckpt" / "state.pt").exists()
    with caplog.at_level(logging.INFO, logger="hnm.pretrain.train"):
        resumed_summary = run(
            cohort,
            tmp_path / "resumed.pt",
            tmp_path / "ckpt",
            settings=PretrainSettings(**{**SETTINGS.as_dict(), "workers": 1}),
        )
    assert "resuming from epoch 1 of 2" in caplog.text
    assert len(resumed_summary["losses"]) == 2  # epoch 1 came from the checkpoint
    straight, straight_meta = load_encoder_file(tmp_path / "straight.pt")
    resumed, resumed_meta = load_encoder_file(tmp_path / "resumed.pt")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert straight_meta.extra["pretrain"]["losses"] == resumed_meta.extra["pretrain"]["losses"]


def test_changed_settings_start_over(cohort, tmp_path, caplog) -> None:  # noqa: ANN001
    with pytest.raises(RuntimeError):
        run(
            cohort,
            tmp_path / "a.pt",
            tmp_path / "ckpt",
            on_epoch_end=lambda done: (_ for _ in ()).throw(RuntimeError("killed")),
        )
    other = PretrainSettings(**{**SETTINGS.as_dict(), "lr": 0.02, "max_steps_per_epoch": 1})
    with caplog.at_level(logging.INFO, logger="hnm"):
        summary = run(cohort, tmp_path / "a.pt", tmp_path / "ckpt", settings=other)
    assert "made with other settings" in caplog.text and summary["patches"] == [8, 8]


def test_cli_output_is_taken_by_extraction(cohort, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "encoder.pt"
    argv = [
        "pretrain",
        "--sheet",
        str(cohort["sheet"]),
        "--tiles",
        *map(str, cohort["tiles"]),
        "--encoder-in",
        str(cohort["encoder"]),
        "--out",
        str(out),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-steps-per-epoch",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    assert main(argv) == 0 and out.exists()
    tiles = cohort["root"] / "tiles" / "t1.h5"
    features = tmp_path / "t1.h5"
    assert (
        main(
            [
                "extract",
                "--slide",
                str(cohort["root"] / "t1.tiff"),
                "--slide-id",
                "t1",
                "--tiles",
                str(tiles),
                "--encoder",
                str(out),
                "--round",
                "0",
                "--out",
                str(features),
                "--device",
                "cpu",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    values, coords, _ = read_features(features)
    assert values.shape == (8, 128) and np.isfinite(values).all()
    missing = argv.copy()
    missing[missing.index("--tiles") + 1] = str(tmp_path / "nowhere" / "t1.h5")
    assert main(missing) == 2


def test_no_training_patches_is_an_error(cohort, tmp_path) -> None:  # noqa: ANN001
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    only_bad = sheet[sheet["slide_id"].isin(["bad", "v1"])]
    with pytest.raises(HnmError, match="no training slide has patches"):
        pretrain(
            only_bad,
            cohort["tiles"],
            cohort["encoder"],
            tmp_path / "x.pt",
            None,
            SETTINGS,
            torch.device("cpu"),
        )


def test_pretrained_weights_are_accepted_like_initial_ones(cohort, tmp_path) -> None:  # noqa: ANN001
    """Given a pretrained file as encoder.weights, init-encoder loads backbone and head strictly."""
    out = tmp_path / "p.pt"
    run(cohort, out, None, settings=PretrainSettings(**{**SETTINGS.as_dict(), "epochs": 1}))
    again = tmp_path / "again.pt"
    assert main(["init-encoder", "--weights", str(out), "--out", str(again)]) == 0
    first, _ = load_encoder_file(out)
    second, _ = load_encoder_file(again)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_epoch(cohort, tmp_path) -> None:  # noqa: ANN001
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    summary = pretrain(
        sheet,
        cohort["tiles"],
        cohort["encoder"],
        tmp_path / "gpu.pt",
        None,
        SETTINGS,
        torch.device("cuda"),
    )
    assert summary["settings"]["precision"] == "bf16"
    assert all(np.isfinite(summary["losses"]))


def test_an_unreadable_training_slide_fails_or_is_skipped(cohort, tmp_path) -> None:  # noqa: ANN001
    """A train slide whose file breaks after tiling: fail names it; skip pretrains without it,
    equal to a run whose sheet never had the slide."""
    import dataclasses
    import shutil

    broken = dict(cohort)
    broken["root"] = tmp_path / "cohort"
    shutil.copytree(cohort["root"], broken["root"])
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    sheet["path"] = [str(broken["root"] / Path(p).name) for p in sheet["path"]]
    (broken["root"] / "t3.tiff").write_bytes(b"truncated")
    broken["sheet"] = broken["root"] / "sheet.tsv"
    sheet.to_csv(broken["sheet"], sep="\t", index=False)
    broken["tiles"] = sorted((broken["root"] / "tiles").glob("*.h5"))

    with pytest.raises(SlideError, match="slide 't3'"):
        run(broken, tmp_path / "fail.pt", None)

    skip = dataclasses.replace(SETTINGS, on_slide_error="skip")
    summary = run(broken, tmp_path / "skip.pt", tmp_path / "ckpt", skip)
    assert list(summary["skipped_slides"]) == ["t3"] and summary["training_slides"] == 3

    without = dict(broken)
    without["sheet"] = broken["root"] / "without.tsv"
    sheet[sheet["slide_id"] != "t3"].to_csv(without["sheet"], sep="\t", index=False)
    without["tiles"] = [t for t in broken["tiles"] if t.stem != "t3"]
    run(without, tmp_path / "without.pt", None, skip)
    skipped, _ = load_encoder_file(tmp_path / "skip.pt")
    never, _ = load_encoder_file(tmp_path / "without.pt")
    for name, tensor in never.state_dict().items():
        assert torch.equal(tensor, skipped.state_dict()[name]), name
