"""Time per MIL epoch on a Camelyon16-shaped synthetic cohort, beside feature extraction's time.

docs/performance.md asks that MIL training never be the bottleneck of a round. This builds the cohort
in memory (default: 270 train/val bags, mean 8,000 patches, 512-d, like Camelyon16 at 5x with a
ResNet-18), times real training epochs of hnm's trainer (DSMIL, pair mode with the ranking loss,
plus validation each epoch) on each device asked for, and prints them beside the extraction time of
the same cohort at a given encoder rate (img/s, e.g. from docs/performance.md or bench runs).

It times the batched trainer and the per-bag loop it replaced (tests/mil_reference.py) in one
process, epochs interleaved, and prints the ratio. --thread-policy compares torch's default thread
count with hnm mil's sized one (run two copies at once to see them under contention).

    python bench/bench_mil.py --epochs 3 --img-per-s 90   # this CPU (ResNet-18 bf16 ~90 img/s)
    python bench/bench_mil.py --devices cuda --img-per-s 39651    # one H200, ResNet-18 encoder-only

Under contention (two jobs of 2 threads each on a shared machine), run two copies at once, once
per policy:

    for i in 1 2; do python bench/bench_mil.py --bags 80 --epochs 3 --img-per-s 90 --no-legacy \
        --threads 2 --thread-policy default & done; wait          # then --thread-policy sized
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

from hnm.core.threads import intra_op_threads  # noqa: E402
from hnm.mil.data import Bag, Cohort  # noqa: E402
from hnm.mil.dsmil import QUERY_DIM  # noqa: E402
from hnm.mil.settings import MilSettings  # noqa: E402
from hnm.mil.train import class_weights, new_run, train_epoch, validate  # noqa: E402
from tests.mil_reference import reference_train_epoch, reference_validate  # noqa: E402


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


def time_device(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Epochs of each loop asked for, interleaved (legacy, batched, legacy, ...) so a machine
    shared with other jobs slows both alike; the first epoch of each warms up and is dropped."""
    cohort = build_cohort(args, device)
    settings = MilSettings(epochs=args.epochs, ranking_loss=not args.no_ranking_loss)
    split = (cohort.indices("train", 1), cohort.indices("train", 0), cohort.indices("val"))
    loops = {"batched": (train_epoch, validate)}
    if not args.no_legacy:
        loops = {"legacy": (reference_train_epoch, reference_validate)} | loops
    runs = {name: new_run(settings, cohort.feature_dim, device) for name in loops}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for epoch in range(args.epochs):
        for name, (train, check) in loops.items():
            times[name].append(_time_epoch(runs[name], train, check, cohort, settings, split))
            train_s, val_s = times[name][-1]
            print(
                f"  {device.type} {name} epoch {epoch}: train {train_s:.2f} s, val {val_s:.2f} s",
                flush=True,
            )
    keep = slice(1, None) if args.epochs > 1 else slice(None)
    return {
        name: {
            "train_s": float(np.mean([t for t, _ in rows[keep]])),
            "val_s": float(np.mean([v for _, v in rows[keep]])),
            "epoch_s": float(np.mean([t + v for t, v in rows[keep]])),
            "patches": int(cohort.features.shape[0]),
            "train_bags": int(len(split[0]) + len(split[1])),
            "train_pairs": int(min(len(split[0]), len(split[1]))),
            "val_bags": int(len(split[2])),
            "threads": torch.get_num_threads(),
        }
        for name, rows in times.items()
    }


def _time_epoch(run, train, check, cohort, settings, split) -> tuple[float, float]:  # noqa: ANN001
    """(train seconds, validation seconds) of one epoch of one loop."""
    train_pos, train_neg, val = split
    weights = class_weights(settings, len(train_pos), len(train_neg))
    device = cohort.features.device
    _sync(device)
    started = time.perf_counter()
    train(run, cohort, settings, train_pos, train_neg, weights)
    run.scheduler.step()
    _sync(device)
    trained = time.perf_counter()
    check(run.model, cohort, val, settings)
    _sync(device)
    return trained - started, time.perf_counter() - trained


def choose_threads(args: argparse.Namespace) -> int:
    """`default`: torch's own count (or --threads); `sized`: hnm.core.threads' policy for bags
    of the mean size, within a budget of --threads (0: all usable cores)."""
    if args.thread_policy == "sized":
        return intra_op_threads(args.threads, args.mean_patches * args.dim * QUERY_DIM)
    return args.threads or torch.get_num_threads()


def matrix_product_floor(rows: int, dim: int, device: torch.device, repeats: int = 5) -> float:
    """Seconds of the matrix products alone of one DSMIL pair step on bags of `rows` patches:
    forward h W1^T (rows x d x 128) and hidden W2^T (rows x 128 x 128), backward dW1, dW2 and
    d hidden, twice (two bags). No loop can make a step cheaper than this without changing the
    arithmetic, so step time / floor bounds what removing overhead can gain."""
    h = torch.randn(rows, dim, device=device)
    hidden = torch.randn(rows, QUERY_DIM, device=device)
    grad = torch.randn(rows, QUERY_DIM, device=device)
    w1 = torch.randn(QUERY_DIM, dim, device=device)
    w2 = torch.randn(QUERY_DIM, QUERY_DIM, device=device)

    def products() -> None:
        for _ in range(2):
            h @ w1.T, hidden @ w2.T, grad.T @ h, grad.T @ hidden, grad @ w2

    products()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        products()
    _sync(device)
    return (time.perf_counter() - started) / repeats


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
    parser.add_argument(
        "--threads", type=int, default=0, help="the job's CPU thread budget (0: torch's default)"
    )
    parser.add_argument(
        "--thread-policy",
        choices=("default", "sized"),
        default="sized",
        help="default: --threads as given; sized: hnm.core.threads.intra_op_threads (hnm mil's)",
    )
    parser.add_argument("--no-legacy", action="store_true", help="time the batched loop only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(choose_threads(args))
    names = (
        args.devices.split(",")
        if args.devices != "auto"
        else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    )
    results, floors = {}, {}
    for name in names:
        print(f"timing {name} ...", flush=True)
        results[name] = time_device(args, torch.device(name))
        floor = matrix_product_floor(args.mean_patches, args.dim, torch.device(name))
        batched = results[name]["batched"]
        if args.no_ranking_loss:  # one bag per step: half a pair's products
            floor, step = floor / 2, batched["train_s"] / max(batched["train_bags"], 1)
        else:
            step = batched["train_s"] / max(batched["train_pairs"], 1)
        floors[name] = {"matrix_products_per_pair_s": floor, "pair_step_s": step}
        print(
            f"  {name}: training step {step * 1e3:.1f} ms, of which matrix products alone "
            f"{floor * 1e3:.1f} ms ({floor / step:.0%}): removing all other work gains at most "
            f"{step / floor:.2f}x"
        )
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
    for name, by_loop in results.items():
        for loop, result in by_loop.items():
            full = result["epoch_s"] * args.mil_epochs
            print(
                f"{name} {loop}: MIL epoch {result['epoch_s']:.2f} s (train "
                f"{result['train_s']:.2f} s on {result['train_bags']} bags, val "
                f"{result['val_s']:.2f} s on {result['val_bags']}; {result['patches']:,} patches; {result['threads']} "
                f"threads); {args.mil_epochs} epochs {full:,.0f} s = {full / extraction_s:.2f} x "
                "extraction"
            )
        if "legacy" in by_loop:
            ratio = by_loop["legacy"]["epoch_s"] / by_loop["batched"]["epoch_s"]
            print(f"{name}: batched epoch is {ratio:.2f}x faster than the legacy per-bag loop")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "extraction_s": extraction_s,
                    "results": results,
                    "matrix_product_floor": floors,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
