"""Fine-tuning epoch time against neg_ratio (the paper's cost claim), on one synthetic cohort.

Writes a small cohort of tiled JPEG TIFF slides and their tiles files, draws synthetic MIL scores,
mines the sets at each neg_ratio with the real `hnm.mine.sets`, and times fine-tuning epochs per ratio
with the real `hnm.finetune.train` (both updates active: the epochs lie past warm-up; the first epoch is
not timed, the fastest of the next ones is reported). An epoch iterates over the hard negatives,
so its time should follow neg_ratio; the ratios to neg_ratio 1.0 (ItS2CLR) are printed. Last, the
batched augmentation's rate is set against the SupCon update's on the same device, and the whole
stage's images/s (reading, augmentation, both updates) against the training step alone (augmentation
and update of patches already on the device): docs/performance.md asks for at least 0.8 x.

CPU (small and quick):  python bench/bench_finetune.py
GPU (paper-sized):      python bench/bench_finetune.py --arch resnet18 --patch 224 --slides 16 \
                            --slide-px 6720 --batch-size 512 --device cuda --workers 14
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnm.contrastive.augment import SimCLRAugment  # noqa: E402
from hnm.contrastive.batches import make_views  # noqa: E402
from hnm.core.device import resolve_device, resolve_precision  # noqa: E402
from hnm.encoders import build_encoder, save_encoder_file  # noqa: E402
from hnm.finetune.plan import Pools, plan_epoch  # noqa: E402
from hnm.finetune.settings import FinetuneSettings  # noqa: E402
from hnm.finetune.train import contrastive_update, finetune, make_optimizer  # noqa: E402
from hnm.io.h5io import level0_tiles_attrs, write_tiles  # noqa: E402
from hnm.mine.sets import run_mining  # noqa: E402
from hnm.mine.settings import MineSettings  # noqa: E402


def _write_slide(path: Path, slide_px: int, tumour: bool, rng: np.random.Generator) -> None:
    """A tiled JPEG TIFF: a smooth texture plus noise (compresses like tissue, not like noise)."""
    side = min(slide_px, 1024)
    yy, xx = np.mgrid[0:side, 0:side]
    base = 128 + 60 * np.sin(xx / 7) * np.cos(yy / 11)
    texture = np.clip(base[..., None] + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
    if tumour:
        texture[..., 0] = np.maximum(texture[..., 0], 170)
    repeats = -(-slide_px // side)
    image = np.tile(texture, (repeats, repeats, 1))[:slide_px, :slide_px]
    tifffile.imwrite(
        path,
        image,
        tile=(256, 256) if slide_px >= 256 else (16, 16),
        photometric="rgb",
        compression="jpeg",
    )


def make_cohort(
    root: Path, slides: int, slide_px: int, patch: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sheet, synthetic scores): half negative, half positive slides, a full patch grid each.

    All slides of a class share one image file (pixels do not change the timing), so a large
    cohort costs two files to make.
    """
    rng = np.random.default_rng(seed)
    (root / "tiles").mkdir(parents=True, exist_ok=True)
    files = {label: root / f"{'tumor' if label else 'normal'}.tiff" for label in (0, 1)}
    for label, path in files.items():
        _write_slide(path, slide_px, bool(label), rng)
    ys, xs = np.mgrid[0 : slide_px - patch + 1 : patch, 0 : slide_px - patch + 1 : patch]
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    rows, scores = [], []
    for number in range(slides):
        label = number % 2
        slide = f"{'tumor' if label else 'normal'}_{number:03d}"
        write_tiles(
            root / "tiles" / f"{slide}.h5",
            coords,
            level0_tiles_attrs(slide, files[label], patch),
        )
        rows.append(
            {
                "slide_id": slide,
                "path": str(files[label]),
                "label": label,
                "split": "train",
                "mpp": 1.0,
                "annotation": "",
            }
        )
        count = len(coords)
        score = (
            rng.beta(1, 6, count)
            if not label
            else np.where(rng.random(count) < 0.3, rng.beta(6, 1, count), rng.beta(1, 4, count))
        )
        scores.append(
            pd.DataFrame({"slide_id": slide, "idx": np.arange(count), "logit": 0.0, "score": score})
        )
    return pd.DataFrame(rows), pd.concat(scores, ignore_index=True)


def augment_vs_step(
    arch: str, patch: int, batch: int, device: torch.device, precision: str, repeats: int
) -> dict[str, float]:
    """Views/s of the batched augmentation against views/s of one SupCon update (fwd+bwd+SGD).

    Both run on `device` from uint8 patches already there, so this isolates the augmentation's
    share of a step: docs/performance.md asks that it keeps up with the training step.
    """
    settings = FinetuneSettings(batch_size=batch, precision=precision)
    precision = resolve_precision(precision, device)
    model = build_encoder(arch).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, settings, None)
    augment = SimCLRAugment(patch, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, patch, patch, 3), dtype=torch.uint8, device=device)
    labels = (torch.arange(batch, device=device) % 5 == 0).long()

    def timed(function) -> float:  # noqa: ANN001
        function()  # warm-up: kernels, allocator, cudnn autotuning
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / repeats

    views = make_views(augment, images, generator, channels_last)
    augment_s = timed(lambda: make_views(augment, images, generator, channels_last))
    step_s = timed(
        lambda: contrastive_update(model, optimizer, views, labels, "negative", settings, precision)
    )
    return {
        "augment_views_per_s": 2 * batch / augment_s,
        "update_views_per_s": 2 * batch / step_s,
        "augment_share_of_step": augment_s / (augment_s + step_s),
        "step_images_per_s": batch / (augment_s + step_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.05,0.2,1.0")
    parser.add_argument("--arch", default="resnet_mini")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--slide-px", type=int, default=512)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="loader processes (0: reading in this process, so the CPU seconds "
        "cover all of the work)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timed-epochs",
        type=int,
        default=2,
        help="epochs timed per ratio after one untimed epoch (minimum reported)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed repeats of the augmentation/update throughput check",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default); 1 keeps CPU seconds honest "
        "on a shared machine, where idle worker threads spin",
    )
    parser.add_argument("--json-out", default="")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as folder:
        root = Path(folder)
        started = time.perf_counter()
        sheet, scores = make_cohort(root, args.slides, args.slide_px, args.patch, args.seed)
        print(
            f"cohort: {args.slides} slides, {len(scores)} patches "
            f"({int((scores.slide_id.str.startswith('normal')).sum())} in negative slides), "
            f"{args.patch} px, made in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        encoder = root / "encoder.pt"
        save_encoder_file(encoder, build_encoder(args.arch, seed=args.seed), source="random")
        # The first epoch carries one-off costs (first kernels of each batch shape, slide handles
        # opening) that would blur small epochs; later epochs are timed, and their minimum kept
        # because this machine is shared (noise only ever adds time).
        # One round inside a schedule of about 100 epochs, as the paper's: the timed epochs run at
        # the base learning rate.
        epochs = 1 + args.timed_epochs
        settings = FinetuneSettings(
            epochs_per_round=epochs,
            rounds=-(-100 // epochs),
            warmup=0,
            batch_size=args.batch_size,
            seed=args.seed,
            precision=args.precision,
        )
        results = []
        for ratio in ratios:
            sets, summary = run_mining(
                sheet, scores, "synthetic", 0.8, 1, MineSettings(neg_ratio=ratio)
            )
            sets_path = root / f"sets_{ratio}.parquet"
            sets.to_parquet(sets_path)
            extra = finetune(
                sheet,
                sets_path,
                sorted((root / "tiles").glob("*.h5")),
                encoder,
                root / "out.pt",
                None,
                settings,
                device,
                args.workers,
            )
            plans = plan_epoch(Pools.from_sets(sets, str(sets_path)), settings, 1, True)
            results.append(
                {
                    "neg_ratio": ratio,
                    "hard_negatives": extra["hard_negatives"],
                    "images_per_epoch": sum(sum(plan.sizes) for plan in plans),
                    "steps": extra["steps_per_epoch"],
                    "epoch_seconds": min(extra["epoch_seconds"][1:]),
                    "epoch_cpu_seconds": min(extra["epoch_cpu_seconds"][1:]),
                    "all_epoch_seconds": extra["epoch_seconds"],
                }
            )
    full = next((r for r in results if r["neg_ratio"] == 1.0), None)
    print(f"\ndevice {device}, arch {args.arch}, batch {args.batch_size}, workers {args.workers}")
    print(
        f"{'neg_ratio':>9} {'|H|':>7} {'steps':>6} {'wall s':>8} {'vs 1.0':>7} {'saving':>7} "
        f"{'cpu s':>8} {'vs 1.0':>7}"
    )
    for row in results:
        row["vs_full"] = row["epoch_seconds"] / full["epoch_seconds"] if full else float("nan")
        row["cpu_vs_full"] = (
            row["epoch_cpu_seconds"] / full["epoch_cpu_seconds"] if full else float("nan")
        )
        print(
            f"{row['neg_ratio']:>9.2f} {row['hard_negatives']:>7d} {row['steps']:>6d} "
            f"{row['epoch_seconds']:>8.2f} {row['vs_full']:>7.3f} {1 - row['vs_full']:>7.1%} "
            f"{row['epoch_cpu_seconds']:>8.2f} {row['cpu_vs_full']:>7.3f}"
        )
    rates = augment_vs_step(
        args.arch, args.patch, args.batch_size, device, args.precision, args.repeats
    )
    print(
        f"\naugmentation {rates['augment_views_per_s']:.0f} views/s, SupCon update "
        f"{rates['update_views_per_s']:.0f} views/s: augmentation is "
        f"{rates['augment_share_of_step']:.1%} of (augmentation + update)"
    )
    step_images_per_s = rates["step_images_per_s"]
    print(f"training step alone (augmentation + update): {step_images_per_s:.1f} images/s")
    for row in results:
        row["stage_images_per_s"] = row["images_per_epoch"] / row["epoch_seconds"]
        row["stage_vs_step"] = row["stage_images_per_s"] / step_images_per_s
        print(
            f"  neg_ratio {row['neg_ratio']:.2f}: whole stage {row['stage_images_per_s']:.1f} "
            f"images/s over {row['images_per_epoch']} images, {row['stage_vs_step']:.2f} x the "
            "training step alone"
        )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"args": vars(args), "results": results, "throughput": rates}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
