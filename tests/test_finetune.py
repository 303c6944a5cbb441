"""Fine-tuning: epoch plans, the LR schedule, and real runs on tiny synthetic tiled TIFF slides."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from hnm.cli import main
from hnm.contrastive.lr import learning_rate
from hnm.core.errors import SlideError
from hnm.encoders import build_encoder, load_encoder_file, save_encoder_file
from hnm.finetune.plan import Pools, plan_epoch, steps_per_epoch
from hnm.finetune.settings import EncoderSchedule, FinetuneSettings
from hnm.finetune.train import finetune
from hnm.io.h5io import level0_tiles_attrs, write_tiles
from hnm.mine.sets import run_mining
from hnm.mine.settings import MineSettings

PATCH = 32
SLIDES = {"n1": 0, "n2": 0, "p1": 1, "p2": 1}


def _write_slide(path: Path, label: int, seed: int) -> np.ndarray:
    """A 64 x 128 px tiled TIFF (2 x 4 patches): noise, reddish for tumour slides."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    if label:
        image[..., 0] = np.maximum(image[..., 0], 180)
    tifffile.imwrite(path, image, tile=(16, 16), photometric="rgb", compression="zlib")
    ys, xs = np.mgrid[0:64:PATCH, 0:128:PATCH]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    (root / "tiles").mkdir()
    rows, scores = [], []
    rng = np.random.default_rng(0)
    for seed, (slide, label) in enumerate(SLIDES.items()):
        path = root / f"{slide}.tiff"
        coords = _write_slide(path, label, seed)
        write_tiles(
            root / "tiles" / f"{slide}.h5",
            coords,
            level0_tiles_attrs(slide, path, PATCH),
        )
        rows.append(
            {
                "slide_id": slide,
                "path": str(path),
                "label": label,
                "split": "train",
                "mpp": 1.0,
                "annotation": "",
            }
        )
        for idx in range(len(coords)):
            score = rng.uniform(0.4, 1.0) if label and idx % 2 == 0 else rng.uniform(0, 0.3)
            scores.append({"slide_id": slide, "idx": idx, "logit": 0.0, "score": score})
    sheet = pd.DataFrame(rows)
    sheet.to_csv(root / "sheet.tsv", sep="\t", index=False)
    sets, _ = run_mining(sheet, pd.DataFrame(scores), "scores", 0.8, 0, MineSettings(neg_ratio=0.5))
    sets.to_parquet(root / "sets.parquet")
    save_encoder_file(root / "encoder.pt", build_encoder("resnet_mini", seed=0), source="random:0")
    return {
        "root": root,
        "sheet": root / "sheet.tsv",
        "sets": root / "sets.parquet",
        "tiles": sorted((root / "tiles").glob("*.h5")),
        "encoder": root / "encoder.pt",
    }


SETTINGS = FinetuneSettings(
    epochs_per_round=2, rounds=2, warmup=1, batch_size=8, cosine_after=1, lr=0.05, seed=3
)


def run(
    cohort: dict[str, Path],
    out: Path,
    checkpoints: Path | None,
    workers: int = 0,
    settings: FinetuneSettings = SETTINGS,
    **kwargs,
) -> dict:  # noqa: ANN003
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    return finetune(
        sheet,
        cohort["sets"],
        cohort["tiles"],
        cohort["encoder"],
        out,
        checkpoints,
        settings,
        torch.device("cpu"),
        workers,
        **kwargs,
    )


def _pools(hardneg: int, positives: int = 5) -> Pools:
    return Pools(
        slides=["a"],
        hardneg=np.stack([np.zeros(hardneg, int), np.arange(hardneg)], axis=1),
        positives=np.stack([np.zeros(positives, int), 1000 + np.arange(positives)], axis=1),
        curriculum=np.array([[0, 1000]]),
        negatives=np.stack([np.zeros(hardneg, int), np.arange(hardneg)], axis=1),
    )


def test_epoch_plan_iterates_over_the_hard_negatives_once() -> None:
    settings = FinetuneSettings(batch_size=10, neg_fraction=0.8)  # 8 negatives + 2 positives
    pools = _pools(20)
    plans = plan_epoch(pools, settings, global_epoch=7, positive_update=True)
    assert len(plans) == steps_per_epoch(20, settings) == 3  # ceil(20 / 8)
    first_parts = np.concatenate([p.rows[: p.sizes[0], 1] for p in plans])
    assert sorted(first_parts) == list(range(20))  # every hard negative exactly once
    for plan in plans:
        n1, p1, n2, c2 = plan.sizes
        assert n1 in (6, 7) and p1 == 2 and n1 + p1 == n2 + c2 and c2 == 1
        assert len(plan.rows) == n1 + p1 + n2 + c2
        assert np.all(plan.rows[n1 : n1 + p1, 1] >= 1000)  # pseudo-positives
        assert np.all(plan.rows[-c2:, 1] == 1000)  # curriculum
    again = plan_epoch(pools, settings, global_epoch=7, positive_update=True)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(plans, again))
    other = plan_epoch(pools, settings, global_epoch=8, positive_update=True)
    assert not all(np.array_equal(a.rows, b.rows) for a, b in zip(plans, other))
    before_warmup = plan_epoch(pools, settings, global_epoch=0, positive_update=False)
    assert all(p.sizes[2:] == (0, 0) for p in before_warmup)


def test_epoch_cost_follows_the_hard_negatives() -> None:
    settings = FinetuneSettings(batch_size=512)
    assert steps_per_epoch(100_000, settings) == 244  # ceil(100000 / 410)
    assert steps_per_epoch(5_000, settings) == 13
    # Fewer hard negatives than a batch: one smaller step with the same class ratio.
    plans = plan_epoch(_pools(40), settings, 0, positive_update=True)
    assert len(plans) == 1 and plans[0].sizes[:2] == (40, 10)
    assert steps_per_epoch(100_000, FinetuneSettings(max_steps_per_epoch=5)) == 5


def test_learning_rate_schedule() -> None:
    assert learning_rate(0, 0.01, cosine_after=10, total_epochs=100) == pytest.approx(0.01)
    assert learning_rate(10, 0.01, cosine_after=10, total_epochs=100) == pytest.approx(0.01)
    assert learning_rate(55, 0.01, cosine_after=10, total_epochs=100) == pytest.approx(0.005)
    assert learning_rate(100, 0.01, cosine_after=10, total_epochs=100) == pytest.approx(0.0)
    assert learning_rate(130, 0.01, cosine_after=10, total_epochs=100) == pytest.approx(0.0)


def test_two_epochs_change_weights_and_record_state(cohort, tmp_path) -> None:  # noqa: ANN001
    extra = run(cohort, tmp_path / "r1" / "encoder.pt", tmp_path / "ckpt")
    before, _ = load_encoder_file(cohort["encoder"])
    after, meta = load_encoder_file(tmp_path / "r1" / "encoder.pt")
    for name, tensor in before.state_dict().items():
        if name.endswith("conv1.weight") or name.startswith("head."):
            assert not torch.equal(tensor, after.state_dict()[name]), name
    assert meta.epoch == 2 and meta.round == 1
    assert meta.optimizer is not None and meta.optimizer["state"]  # momentum buffers carried
    assert meta.scheduler["epoch"] == 2
    assert len(meta.extra["epoch_seconds"]) == 2 and meta.extra["hard_negatives"] == 8
    assert extra["steps_per_epoch"] == 2  # ceil(8 / round(0.8 * 8))
    assert all(np.isfinite(v) for loss in meta.extra["losses"] for v in loss.values())
    assert meta.extra["losses"][0]["loss_positive"] == 0  # epoch 0 is before warm-up
    assert meta.extra["losses"][1]["loss_positive"] > 0
    assert not (tmp_path / "ckpt" / "state.pt").exists()  # cleared once the output exists


def test_resume_equals_uninterrupted(cohort, tmp_path, caplog) -> None:  # noqa: ANN001
    run(cohort, tmp_path / "straight.pt", None)

    class Killed(Exception):
        pass

    def kill_after_first(done: int) -> None:
        if done == 1:
            raise Killed

    with pytest.raises(Killed):
        run(
            cohort,
            tmp_path / "resumed.pt",
            tmp_path / "ckpt",
            workers=1,
            on_epoch_end=kill_after_first,
        )
    assert not (tmp_path / "resumed.pt").exists() and (tmp_path / "ckpt" / "state.pt").exists()
    with caplog.at_level(logging.INFO, logger="hnm.finetune.train"):
        run(cohort, tmp_path / "resumed.pt", tmp_path / "ckpt", workers=1)
    assert "resuming from epoch 1" in caplog.text
    straight, straight_meta = load_encoder_file(tmp_path / "straight.pt")
    resumed, resumed_meta = load_encoder_file(tmp_path / "resumed.pt")
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert straight_meta.extra["losses"] == resumed_meta.extra["losses"]


def test_next_round_continues_the_global_epoch(cohort, tmp_path) -> None:  # noqa: ANN001
    first = tmp_path / "r1.pt"
    run(
        cohort,
        first,
        None,
        settings=FinetuneSettings(
            epochs_per_round=1, rounds=4, warmup=1, batch_size=8, seed=3, max_steps_per_epoch=1
        ),
    )
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    finetune(
        sheet,
        cohort["sets"],
        cohort["tiles"],
        first,
        tmp_path / "r2.pt",
        None,
        FinetuneSettings(
            epochs_per_round=1, rounds=4, warmup=1, batch_size=8, seed=3, max_steps_per_epoch=1
        ),
        torch.device("cpu"),
        0,
    )
    _, meta = load_encoder_file(tmp_path / "r2.pt")
    assert meta.epoch == 2 and meta.round == 2
    assert meta.extra["losses"][0]["loss_positive"] > 0  # global epoch 1 >= warm-up


def test_cli(cohort, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "encoder.pt"
    argv = [
        "finetune",
        "--sheet",
        str(cohort["sheet"]),
        "--sets",
        str(cohort["sets"]),
        "--tiles",
        *map(str, cohort["tiles"]),
        "--encoder-in",
        str(cohort["encoder"]),
        "--out",
        str(out),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--epochs-per-round",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--max-steps-per-epoch",
        "1",
    ]
    assert main(argv) == 0 and out.exists()
    missing = argv.copy()
    missing[missing.index("--tiles") + 1] = str(tmp_path / "nowhere" / "a.h5")
    assert main(missing) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_epoch(cohort, tmp_path) -> None:  # noqa: ANN001
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    extra = finetune(
        sheet,
        cohort["sets"],
        cohort["tiles"],
        cohort["encoder"],
        tmp_path / "gpu.pt",
        None,
        SETTINGS,
        torch.device("cuda"),
        1,
    )
    assert extra["settings"]["precision"] == "bf16"
    assert all(np.isfinite(v) for loss in extra["losses"] for v in loss.values())


def test_a_slide_unreadable_at_fine_tuning_fails_or_is_skipped(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    """Was: skip held at tiling only; a slide whose pixels fail here stopped the run."""
    broken = tmp_path / "n2 (broken).tiff"
    broken.write_bytes(cohort["root"].joinpath("n2.tiff").read_bytes())
    with tifffile.TiffFile(broken) as tiff:
        spans = list(zip(tiff.pages[0].dataoffsets, tiff.pages[0].databytecounts))
    with open(broken, "r+b") as handle:  # every tile's data, after tiling: undecodable
        for offset, count in spans:
            handle.seek(offset)
            handle.write(b"\xff" * count)
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    sheet.loc[sheet["slide_id"] == "n2", "path"] = str(broken)
    sheet.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    broken_cohort = {**cohort, "sheet": tmp_path / "sheet.tsv"}
    with pytest.raises(SlideError) as caught:
        run(broken_cohort, tmp_path / "fail.pt", None)
    assert caught.value.slide_id == "n2" and "on_slide_error: skip" in str(caught.value)
    assert not (tmp_path / "fail.pt").exists()

    skip = dataclasses.replace(SETTINGS, on_slide_error="skip")
    summary = run(broken_cohort, tmp_path / "skip.pt", tmp_path / "ckpt", settings=skip)
    skipped = summary["skipped_slides"]
    assert list(skipped) == ["n2"] and skipped["n2"]["path"] == str(broken)
    assert "on_slide_error" not in skipped["n2"]["error"] and skipped["n2"]["error"]
    _model, meta = load_encoder_file(tmp_path / "skip.pt")
    assert meta.extra["skipped_slides"] == skipped
    assert meta.epoch == SETTINGS.epochs_per_round


def test_authors_rounds_follow_the_refresh_offset_and_per_epoch_sets(cohort, tmp_path) -> None:  # noqa: ANN001
    """refresh_offset 1: round 0 trains one epoch more, the last round one fewer, and per-epoch
    sets (curriculum re-cut every epoch, self-paced confident negatives) feed the runs."""
    sheet = pd.read_csv(cohort["sheet"], sep="\t")
    settings = FinetuneSettings(
        epochs_per_round=2,
        rounds=3,
        warmup=1,
        refresh_offset=1,
        batch_size=8,
        seed=3,
        lr=0.05,
        cosine_after=1,
        lr_schedule="stepped",
        supcon_average="all_views",
        max_steps_per_epoch=1,
    )
    mining = MineSettings(
        neg_ratio=0.5,
        curriculum_update="epoch",
        confident_negatives="self_paced",
        gate=False,
        schedule=EncoderSchedule(epochs_per_round=2, rounds=3, warmup=1, refresh_offset=1),
    )
    sets0 = pd.read_parquet(cohort["sets"])
    scores = sets0.drop_duplicates(["slide_id", "idx"])[["slide_id", "idx", "score"]]
    encoder, ends = cohort["encoder"], []
    previous = None
    for round_index in range(3):
        sets, summary = run_mining(sheet, scores, "s", 0.8, round_index, mining, *(previous or ()))
        previous = (sets, summary)
        assert (sets["epoch"] >= 0).any()  # per-epoch rows
        sets_path = tmp_path / f"sets{round_index}.parquet"
        sets.to_parquet(sets_path)
        out = tmp_path / f"r{round_index + 1}.pt"
        finetune(
            sheet, sets_path, cohort["tiles"], encoder, out, None, settings, torch.device("cpu"), 0
        )
        _, meta = load_encoder_file(out)
        ends.append(meta.epoch)
        assert meta.scheduler["kind"] == "constant_then_cosine_stepped"
        assert len(meta.extra["losses"]) == meta.epoch - (ends[-2] if len(ends) > 1 else 0)
        encoder = out
    assert ends == [3, 5, 6]
