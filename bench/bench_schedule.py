"""Projects the wall time of the published HNM schedule from steady rates measured on this machine.

The schedule (Camelyon16, docs of the paper): about 400 slides, 3 million 224-px patches at 2 um/px,
a ResNet-18 encoder; round 0 extracts features with the initial encoder and trains MIL; each of 20
rounds then fine-tunes the encoder with SupCon for 5 epochs (an epoch is one pass over the hard
negatives, 5% of the negative slides' patches), re-extracts every patch and trains MIL for 350
epochs. Three rates are measured, each after a warm-up, on synthetic inputs:

- extraction: ResNet-18 features of 224-px patches cut from a synthetic slide held in memory
  (cutting, normalising and the forward pass; JPEG decoding and tiling are not included, see
  bench/bench_extract.py for the whole stage);
- fine-tuning: SupCon updates (two views per patch, forward, backward, SGD step) in img/s of views;
  a step of hnm's fine-tuning makes 2 updates (negative and positive anchors) on a batch each;
  augmentation is not included;
- MIL: hnm's trainer (DSMIL, pair mode with the ranking loss) on bags of the mean Camelyon16 size,
  as seconds per pair step and per validation bag, scaled to 270 bags.

Mining and scoring are a few forward passes of the MIL model per round and are left out.

    python bench/bench_schedule.py --quick          # this CPU: seconds, small batches
    python bench/bench_schedule.py --device cuda    # full batches on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnm.core.device import resolve_device  # noqa: E402
from hnm.encoders.registry import build_backbone  # noqa: E402
from hnm.mil.data import Bag, Cohort  # noqa: E402
from hnm.mil.settings import MilSettings  # noqa: E402
from hnm.mil.train import class_weights, new_run, train_epoch, validate  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Schedule:
    """The published schedule; every field is a flag of the same name."""

    patches: int = 3_000_000
    negative_patch_fraction: float = 0.6  # Camelyon16: 239 of 399 slides are normal
    hard_negative_fraction: float = 0.05
    rounds: int = 20
    finetune_epochs: int = 5
    batch_size: int = 512
    neg_fraction: float = 0.8  # negatives per fine-tuning batch
    updates_per_step: int = 2
    mil_epochs: int = 350
    mil_bags: int = 270  # train + val
    val_fraction: float = 0.1
    positive_fraction: float = 111 / 270
    mean_patches: int = 8000
    feature_dim: int = 512


@dataclass(frozen=True)
class Rates:
    extract_img_s: float
    supcon_view_img_s: float
    mil_pair_step_s: float
    mil_val_bag_s: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_rate(step, device: torch.device, seconds: float, minimum: int) -> float:  # noqa: ANN001
    """Calls per second of `step` after one warm-up call, over >= seconds and >= minimum calls."""
    step()
    _sync(device)
    calls, started = 0, time.perf_counter()
    while calls < minimum or time.perf_counter() - started < seconds:
        step()
        calls += 1
    _sync(device)
    return calls / (time.perf_counter() - started)


def synthetic_slide(side: int, seed: int = 0) -> np.ndarray:
    """(side, side, 3) uint8 tissue-like texture: smooth stripes plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    base = 150 + 50 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    noise = rng.normal(0.0, 20.0, (side, side, 3))
    return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)


def measure_extraction(device: torch.device, batch: int, patch: int, seconds: float) -> float:
    """Patches/s: cut a batch of patches from the slide, normalise, ResNet-18 features."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")[0].to(device).eval()
    backbone = backbone.to(memory_format=torch.channels_last)
    per_side = max(1, math.isqrt(batch) + 1)
    slide = torch.from_numpy(synthetic_slide(per_side * patch)).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.inference_mode()
    def step() -> None:
        tiles = slide.unfold(0, patch, patch).unfold(1, patch, patch)  # (gy, gx, 3, p, p)
        x = tiles.reshape(-1, 3, patch, patch)[:batch].float()
        with autocast:
            backbone(((x - mean) / std).contiguous(memory_format=torch.channels_last))

    return batch * _timed_rate(step, device, seconds, minimum=2)


def supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) of (2B, k) normalised view features."""
    similarity = features @ features.T / temperature
    self_mask = torch.eye(len(features), dtype=torch.bool, device=features.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    mean_positive = log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp(min=1)
    return -mean_positive.mean()


def measure_supcon(device: torch.device, batch: int, patch: int, seconds: float) -> float:
    """View images/s of SupCon updates: 2 views of `batch` patches, forward, backward, SGD."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")[0]
    model = nn.Sequential(backbone, nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128)).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    views = torch.randn(2 * batch, 3, patch, patch, device=device)
    views = views.contiguous(memory_format=torch.channels_last)
    labels = (torch.arange(batch, device=device) % 5 == 0).long().repeat(2)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = supcon(F.normalize(model(views).float(), dim=1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return 2 * batch * _timed_rate(step, device, seconds, minimum=2)


def measure_mil(
    device: torch.device, pairs: int, val_bags: int, patches: int, dim: int
) -> tuple[float, float]:
    """(seconds per pair step, seconds per validation bag) of hnm's MIL trainer, bags of
    `patches` rows; the first epoch warms up, the second is timed."""
    generator = torch.Generator(device=device).manual_seed(0)
    count = 2 * pairs + val_bags
    features = torch.randn(count * patches, dim, generator=generator, device=device)
    bags = [
        Bag(f"bag{i}", "train" if i < 2 * pairs else "val", i % 2, i * patches, (i + 1) * patches)
        for i in range(count)
    ]
    cohort = Cohort(features, bags)
    settings = MilSettings(epochs=2)
    run = new_run(settings, dim, device)
    pos, neg, val = cohort.indices("train", 1), cohort.indices("train", 0), cohort.indices("val")
    weights = class_weights(settings, len(pos), len(neg))
    timings = []
    for _ in range(2):
        _sync(device)
        started = time.perf_counter()
        train_epoch(run, cohort, settings, pos, neg, weights)
        _sync(device)
        trained = time.perf_counter()
        validate(run.model, cohort, val, settings)
        _sync(device)
        timings.append(((trained - started) / pairs, (time.perf_counter() - trained) / val_bags))
    return timings[-1]


def project(schedule: Schedule, rates: Rates) -> dict[str, float]:
    """Seconds per stage of one round, per round 0, and in total."""
    s = schedule
    train_bags = round(s.mil_bags * (1 - s.val_fraction))
    positives = round(train_bags * s.positive_fraction)
    pairs = min(positives, train_bags - positives)
    val_bags = s.mil_bags - train_bags
    mil_epoch = pairs * rates.mil_pair_step_s + val_bags * rates.mil_val_bag_s
    hard_negatives = s.hard_negative_fraction * s.negative_patch_fraction * s.patches
    steps = math.ceil(hard_negatives / max(1, round(s.neg_fraction * s.batch_size)))
    views_per_epoch = steps * s.updates_per_step * 2 * s.batch_size
    finetune = s.finetune_epochs * views_per_epoch / rates.supcon_view_img_s
    extraction = s.patches / rates.extract_img_s
    mil = s.mil_epochs * mil_epoch
    round_0 = extraction + mil
    per_round = finetune + extraction + mil
    return {
        "mil_pairs_per_epoch": pairs,
        "mil_epoch_s": mil_epoch,
        "hard_negatives": hard_negatives,
        "finetune_steps_per_epoch": steps,
        "finetune_s_per_round": finetune,
        "extraction_s_per_round": extraction,
        "mil_s_per_round": mil,
        "round_0_s": round_0,
        "round_s": per_round,
        "total_s": round_0 + s.rounds * per_round,
    }


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def report(schedule: Schedule, rates: Rates, projection: dict[str, float]) -> None:
    s, p = schedule, projection
    print(f"extraction       {rates.extract_img_s:10.1f} img/s (ResNet-18, 224 px)")
    print(f"SupCon update    {rates.supcon_view_img_s:10.1f} view img/s (forward+backward+SGD)")
    print(f"MIL pair step    {rates.mil_pair_step_s * 1e3:10.1f} ms ({s.mean_patches} patches/bag)")
    print(f"MIL val bag      {rates.mil_val_bag_s * 1e3:10.1f} ms")
    print(f"MIL epoch        {p['mil_epoch_s']:10.2f} s ({p['mil_pairs_per_epoch']} pairs)")
    print(f"\nper round ({s.patches:,} patches, {p['hard_negatives']:,.0f} hard negatives):")
    print(
        f"  fine-tuning    {_human(p['finetune_s_per_round']):>12} ({s.finetune_epochs} epochs x "
        f"{p['finetune_steps_per_epoch']} steps x {s.updates_per_step} updates)"
    )
    print(f"  extraction     {_human(p['extraction_s_per_round']):>12}")
    print(f"  MIL            {_human(p['mil_s_per_round']):>12} ({s.mil_epochs} epochs)")
    print(f"  round          {_human(p['round_s']):>12}")
    print(f"round 0 (extraction + MIL): {_human(p['round_0_s'])}")
    print(f"total (round 0 + {s.rounds} rounds): {_human(p['total_s'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in asdict(Schedule()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="small measurements (a CPU)")
    parser.add_argument("--seconds", type=float, help="per rate (default 2 quick, 10 full)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, help="also write rates and projection here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    schedule = Schedule(**{name: getattr(args, name) for name in asdict(Schedule())})
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    extract_batch, supcon_batch, pairs, val = (16, 8, 2, 2) if args.quick else (256, 128, 20, 8)
    print(f"measuring on {device} ({torch.get_num_threads()} threads) ...", flush=True)
    rates = Rates(
        measure_extraction(device, extract_batch, 224, seconds),
        measure_supcon(device, supcon_batch, 224, seconds),
        *measure_mil(device, pairs, val, schedule.mean_patches, schedule.feature_dim),
    )
    projection = project(schedule, rates)
    report(schedule, rates, projection)
    if args.json:
        payload = {"device": str(device), "schedule": asdict(schedule), "rates": asdict(rates)}
        args.json.write_text(json.dumps(payload | {"projection": projection}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
