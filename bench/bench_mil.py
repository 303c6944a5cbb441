"""Time per MIL epoch on a Camelyon16-shaped synthetic cohort, beside feature extraction's time.

docs/performance.md asks that MIL training never be the bottleneck of a round. This builds the cohort
in memory (default: 270 train/val bags, mean 8,000 patches, 512-d, like Camelyon16 at 5x with a
ResNet-18), times real training epochs of hnm's trainer (DSMIL, pair mode with the ranking loss,
plus validation each epoch) on each device asked for, and prints them beside the extraction time of
the same cohort at a given encoder rate (img/s, e.g. from docs/performance.md or bench runs).

    python bench/bench_mil.py --epochs 3 --img-per-s 90   # this CPU (ResNet-18 bf16 ~90 img/s)
    python bench/bench_mil.py --devices cuda --img-per-s 39651    # one H200, ResNet-18 encoder-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnm.mil.data import Bag, Cohort  # noqa: E402
from hnm.mil.settings import MilSettings  # noqa: E402
from hnm.mil.train import class_weights, new_run, train_epoch, validate  # noqa: E402


def build_cohort(args: argparse.Namespace, device: torch.device) -> Cohort:
    """Bag sizes ~ Gamma(shape 2) around the mean (Camelyon16's are very uneven), 10% of the
    patches of positive bags shifted along one direction so the model has something to learn."""
    rng = np.random.default_rng(args.seed)
    sizes = np.maximum(50, rng.gamma(2.0, args.mean_patches / 2.0, args.bags)).astype(np.int64)
    labels = (rng.random(args.bags) < args.positive_fraction).astype(int)
    splits = np.where(np.arange(args.bags) < round(args.bags * args.val_fraction), "val", "train")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    direction = torch.randn(args.dim, generator=generator, device=device)
    direction /= direction.norm()
    features = torch.empty((int(sizes.sum()), args.dim), device=device)
    bags, start = [], 0
    for index, (size, label, split) in enumerate(zip(sizes, labels, splits)):
        block = features[start : start + size]
        block.normal_(generator=generator)
        if label:
            block[: size // 10] += 2.0 * direction
        bags.append(Bag(f"bag{index:04d}", str(split), int(label), start, start + int(size)))
        start += int(size)
    return Cohort(features, bags)


def time_device(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    cohort = build_cohort(args, device)
    settings = MilSettings(epochs=args.epochs, ranking_loss=not args.no_ranking_loss)
    run = new_run(settings, cohort.feature_dim, device)
    train_pos, train_neg, val = (
        cohort.indices("train", 1),
        cohort.indices("train", 0),
        cohort.indices("val"),
    )
    weights = class_weights(settings, len(train_pos), len(train_neg))
    train_times, val_times = [], []
    for epoch in range(args.epochs):
        _sync(device)
        started = time.perf_counter()
        loss = train_epoch(run, cohort, settings, train_pos, train_neg, weights)
        run.scheduler.step()
        _sync(device)
        trained = time.perf_counter()
        validate(run.model, cohort, val, settings)
        _sync(device)
        train_times.append(trained - started)
        val_times.append(time.perf_counter() - trained)
        print(
            f"  {device.type} epoch {epoch}: train {train_times[-1]:.2f} s "
            f"(loss {loss:.3f}), val {val_times[-1]:.2f} s",
            flush=True,
        )
    keep = slice(1, None) if args.epochs > 1 else slice(None)  # the first epoch warms up
    return {
        "train_s": float(np.mean(train_times[keep])),
        "val_s": float(np.mean(val_times[keep])),
        "epoch_s": float(np.mean(np.add(train_times, val_times)[keep])),
        "patches": int(cohort.features.shape[0]),
        "train_bags": int(len(train_pos) + len(train_neg)),
        "val_bags": int(len(val)),
        "threads": torch.get_num_threads(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=270, help="train + val bags")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--positive-fraction", type=float, default=111 / 270)
    parser.add_argument(
        "--test-bags", type=int, default=129, help="only for the extraction estimate"
    )
    parser.add_argument("--mean-patches", type=int, default=8000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (the first is dropped)")
    parser.add_argument("--mil-epochs", type=int, default=350, help="epochs of a full MIL training")
    parser.add_argument("--no-ranking-loss", action="store_true", help="bag mode instead of pairs")
    parser.add_argument(
        "--devices", default="auto", help="comma list: cpu, cuda; auto = cpu (+cuda)"
    )
    parser.add_argument("--img-per-s", type=float, required=True, help="extraction rate, patches/s")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (
        args.devices.split(",")
        if args.devices != "auto"
        else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    )
    results = {}
    for name in names:
        print(f"timing {name} ...", flush=True)
        results[name] = time_device(args, torch.device(name))
    mean_cohort_patches = args.mean_patches * (args.bags + args.test_bags)
    extraction_s = mean_cohort_patches / args.img_per_s
    print(
        f"\ncohort: {args.bags} train/val bags (+{args.test_bags} test for extraction), "
        f"mean {args.mean_patches} patches, {args.dim}-d"
    )
    print(
        f"extraction of ~{mean_cohort_patches:,} patches at {args.img_per_s:,.0f} img/s: "
        f"{extraction_s:,.0f} s per round"
    )
    for name, result in results.items():
        full = result["epoch_s"] * args.mil_epochs
        print(
            f"{name}: MIL epoch {result['epoch_s']:.2f} s (train {result['train_s']:.2f} s on "
            f"{result['train_bags']} bags, val {result['val_s']:.2f} s on {result['val_bags']}; "
            f"{result['patches']:,} patches; {result['threads']} threads); "
            f"{args.mil_epochs} epochs {full:,.0f} s = {full / extraction_s:.2f} x extraction"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "extraction_s": extraction_s,
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
