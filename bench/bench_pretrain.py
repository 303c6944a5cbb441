"""Images/s of SimCLR pretraining: the training step alone, and the whole stage reading real tiles.

1. The step alone: uint8 patches already in memory -> two batched augmented views -> encoder and
   projection head -> NT-Xent -> backward -> Adam step, as hnm.pretrain.train.train_epoch does.
   The first steps are not timed (allocator and kernel warm-up).
2. The stage: `hnm.pretrain.train.pretrain` on a synthetic cohort of tiled JPEG TIFFs with their
   tiles files, so patch reading through hnm.io.patches is included; the fastest epoch after the
   first is reported.

Rates are patches per second (each patch is two views, i.e. two forward and backward passes).

CPU (the demo's setting):  python bench/bench_pretrain.py
GPU (paper-sized):         python bench/bench_pretrain.py --arch resnet18 --patch 224 \
                               --batch-size 512 --device cuda --workers 8 --slides 8 --slide-px 4480
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
from hnm.core.threads import torch_threads  # noqa: E402
from hnm.encoders import build_encoder, save_encoder_file  # noqa: E402
from hnm.io.h5io import level0_tiles_attrs, write_tiles  # noqa: E402
from hnm.pretrain.ntxent import nt_xent_loss  # noqa: E402
from hnm.pretrain.settings import PretrainSettings  # noqa: E402
from hnm.pretrain.train import pretrain, pretrain_threads


def step_rate(args: argparse.Namespace, device: torch.device, precision: str) -> float:
    """Patches/s of the training step on random uint8 patches held on the device."""
    model = build_encoder(args.arch, seed=0).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    augment = SimCLRAugment(args.patch, model.spec.mean, model.spec.std)
    generator = torch.Generator().manual_seed(0)
    patches = torch.randint(
        0, 256, (args.batch_size, args.patch, args.patch, 3), dtype=torch.uint8, device=device
    )

    def step() -> None:
        views = make_views(augment, patches, generator, device.type == "cuda")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            projections = model(views)
        loss = nt_xent_loss(projections, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - started)


def make_cohort(root: Path, slides: int, slide_px: int, patch: int) -> tuple[Path, list[Path]]:
    """(sheet, tiles files): `slides` train slides sharing one tiled JPEG TIFF, a full patch grid."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:slide_px, 0:slide_px]
    smooth = 128 + 50 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    image = np.clip(smooth[..., None] + rng.normal(0, 20, (slide_px, slide_px, 3)), 0, 255)
    slide = root / "slide.tiff"
    tile = 256 if slide_px >= 256 else 16
    tifffile.imwrite(
        slide, image.astype(np.uint8), tile=(tile, tile), photometric="rgb", compression="jpeg"
    )
    ys, xs = np.mgrid[0 : slide_px - patch + 1 : patch, 0 : slide_px - patch + 1 : patch]
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    (root / "tiles").mkdir()
    rows, tiles = [], []
    for number in range(slides):
        slide_id = f"s{number:03d}"
        path = root / "tiles" / f"{slide_id}.h5"
        write_tiles(
            path,
            coords,
            level0_tiles_attrs(slide_id, slide, patch),
        )
        tiles.append(path)
        rows.append(
            {
                "slide_id": slide_id,
                "path": str(slide),
                "label": number % 2,
                "split": "train",
                "mpp": 1.0,
                "annotation": "",
            }
        )
    sheet = root / "sheet.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet, tiles


def stage_rate(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Patches/s of the fastest epoch after the first, reading the cohort's tiles."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sheet, tiles = make_cohort(root, args.slides, args.slide_px, args.patch)
        encoder = root / "encoder.pt"
        save_encoder_file(encoder, build_encoder(args.arch, seed=0), source="random:0")
        settings = PretrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_patches_per_epoch=args.steps * args.batch_size,
            workers=args.workers,
            precision=args.precision,
        )
        summary = pretrain(
            pd.read_csv(sheet, sep="\t"), tiles, encoder, root / "out.pt", None, settings, device,
            threads=args.threads,
        )  # fmt: skip
    rates = [p / s for p, s in zip(summary["patches"], summary["epoch_seconds"], strict=True)]
    return {
        "training_patches": summary["training_patches"],
        "patches_per_epoch": summary["patches"][-1],
        "epoch_seconds": summary["epoch_seconds"],
        "patches_per_s": max(rates[1:] or rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet_mini")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16, help="timed steps (and steps per epoch)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="stage epochs (the first untimed)")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--slide-px", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="0: every usable core")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    with torch_threads(pretrain_threads(args.threads)) as threads:
        step = step_rate(args, device, precision)
    stage = stage_rate(args, device)
    result = {
        "arch": args.arch,
        "patch": args.patch,
        "batch_size": args.batch_size,
        "device": str(device),
        "precision": precision,
        "threads": threads,
        "step_patches_per_s": round(step, 1),
        "stage": {k: v if not isinstance(v, float) else round(v, 1) for k, v in stage.items()},
        "stage_vs_step": round(stage["patches_per_s"] / step, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
