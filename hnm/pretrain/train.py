"""SimCLR pretraining: init encoder -> round 0's encoder, trained on the training split's patches.

The paper (like ItS2CLR and DSMIL) starts round 0 from a SimCLR encoder pretrained on the cohort's
own patches. With random weights the round-0 MIL's patch ranking can invert, and every later round
then mines from wrong pseudo-labels (issue 12); a few SimCLR epochs give features in which tissue
that looks alike lies together before any label is used.

The step reuses fine-tuning's machinery: the same patch readers (hnm.io.patches via
hnm.pretrain.data), the same batched augmentations and two-view stacking (hnm.finetune), the
encoder's own projection head (hnm.encoders), bf16 autocast and channels_last on CUDA. Only the
loss differs: NT-Xent, where each patch is its own class.

The output is an ordinary round-0 encoder file (round 0, global epoch 0, no optimizer state), so
extraction and fine-tuning take it exactly as they take init_encoder's: fine-tuning's schedule
starts at its epoch 0 with a fresh SGD state, as it would from given weights.

Resume: a checkpoint after every epoch (model, optimizer, epoch times), fingerprinted by the
settings and the digests of the input encoder and tiles files. A killed job restarts at the next
epoch and, on the CPU, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any

import pandas as pd
import torch

from hnm.contrastive.augment import SimCLRAugment
from hnm.contrastive.batches import batch_loader, make_views
from hnm.contrastive.lr import learning_rate
from hnm.core.checkpoint import Checkpointer, file_digest, fingerprint
from hnm.core.device import resolve_precision
from hnm.core.errors import SlideError
from hnm.core.progress import Progress
from hnm.core.restart import train_skipping_bad_slides
from hnm.core.threads import torch_threads, usable_cores
from hnm.encoders.inputs import check_patch_size
from hnm.encoders.model_file import load_encoder_file, save_encoder_file
from hnm.io.h5io import files_by_slide
from hnm.io.patches import ReadFailure
from hnm.pretrain.data import (
    BatchPatches,
    TrainingPatches,
    plan_epoch,
    skip_slide,
    training_patches,
)
from hnm.pretrain.ntxent import nt_xent_loss
from hnm.pretrain.settings import PretrainSettings

log = logging.getLogger(__name__)

# Keeps the augmentation stream of pretraining apart from fine-tuning's for the same seed.
_AUGMENT_STREAM = 7_919


def pretrain_threads(job_threads: int) -> int:
    """Intra-op threads: the job's budget (0: every usable core), never more than the cores.

    Not scaled down by work size as MIL's are (hnm.core.threads): a training step's convolutions
    over 2 x batch views are large enough to split at any batch this stage accepts.
    """
    budget = job_threads if job_threads > 0 else usable_cores()
    return max(1, min(budget, usable_cores()))


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: SimCLRAugment,
    batches: Iterable[torch.Tensor],
    steps: int,
    epoch: int,
    settings: PretrainSettings,
    device: torch.device,
    precision: str,
) -> float:
    """One epoch of `steps` NT-Xent updates over `batches`; returns the mean loss."""
    model.train()
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + _AUGMENT_STREAM + epoch)
    channels_last = device.type == "cuda"
    total = torch.zeros((), device=device)
    with Progress(
        steps, f"pretrain epoch {epoch + 1}/{settings.epochs}", log, unit="steps"
    ) as progress:
        for step, patches in zip(range(steps), batches):
            if isinstance(patches, ReadFailure):
                raise patches.error()
            lr = learning_rate(
                epoch + step / steps, settings.lr, settings.cosine_after, settings.epochs
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = make_views(
                augment, patches.to(device, non_blocking=True), generator, channels_last
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                projections = model(views)
            loss = nt_xent_loss(projections, settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()  # no .item(): a host sync per step would stall the GPU
            progress.update(1)
    return float(total) / max(1, steps)


def _inputs_fingerprint(
    settings: PretrainSettings,
    precision: str,
    encoder_in: str | os.PathLike[str],
    pool: TrainingPatches,
    tiles: dict[str, Any],
) -> str:
    # Loader processes change how patches are read, never which: a rerun may use another count.
    kept = {k: v for k, v in asdict(settings).items() if k != "workers"}
    # a batch file holds several slides: each file is hashed once
    digests = {path: file_digest(path) for path in {tiles[slide].path for slide in pool.slides}}
    return fingerprint(
        {
            **kept,
            "precision": precision,
            "encoder_sha256": file_digest(encoder_in),
            "tiles_sha256": {slide: digests[tiles[slide].path] for slide in pool.slides},
        }
    )


def _epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: SimCLRAugment,
    pool: TrainingPatches,
    done: int,
    settings: PretrainSettings,
    device: torch.device,
    precision: str,
    timing: dict[str, list[float]],
) -> Iterator[int]:
    """Train the epochs after `done` through ONE loader (reading runs ahead across epoch ends),
    yielding the count done after each so the caller can checkpoint."""
    plans = {
        epoch: plan_epoch(
            len(pool.rows),
            epoch,
            settings.seed,
            settings.batch_size,
            settings.max_patches_per_epoch,
            settings.max_steps_per_epoch,
        )
        for epoch in range(done, settings.epochs)
    }
    batches = iter(
        batch_loader(
            BatchPatches([b for steps in plans.values() for b in steps], pool),
            settings.workers,
            device,
        )
    )
    for epoch, steps in plans.items():
        started, cpu_started = time.perf_counter(), time.process_time()
        loss = train_epoch(
            model, optimizer, augment, batches, len(steps), epoch, settings, device, precision
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        patches = sum(len(b) for b in steps)
        timing["epoch_seconds"].append(seconds)
        timing["epoch_cpu_seconds"].append(time.process_time() - cpu_started)
        timing["losses"].append(loss)
        timing["patches"].append(patches)
        log.info(
            "pretrain epoch %d/%d: %d steps, loss %.4f, lr %.6f, %.1f s, %.1f patches/s",
            epoch + 1,
            settings.epochs,
            len(steps),
            loss,
            optimizer.param_groups[0]["lr"],
            seconds,
            patches / seconds if seconds else float("nan"),
        )
        yield epoch + 1


def pretrain(
    sheet: pd.DataFrame,
    tiles: Iterable[str | os.PathLike[str]],
    encoder_in: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str] | None,
    settings: PretrainSettings,
    device: torch.device,
    threads: int = 0,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Pretrain `encoder_in` for settings.epochs epochs and write round 0's encoder to `out`.

    `threads` is the job's CPU thread budget (0: the cores this process may use); returns the
    summary also stored in the output file's extra["pretrain"].
    """
    with torch_threads(pretrain_threads(threads)) as intra_op:
        log.info("torch intra-op threads: %d (job budget %s)", intra_op, threads or "all cores")
        return _pretrain(
            sheet, tiles, encoder_in, out, checkpoint_dir, settings, device, on_epoch_end
        )


def _pretrain(
    sheet: pd.DataFrame,
    tiles: Iterable[str | os.PathLike[str]],
    encoder_in: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str] | None,
    settings: PretrainSettings,
    device: torch.device,
    on_epoch_end: Callable[[int], None] | None,
) -> dict[str, Any]:
    tiles_files = files_by_slide(tiles, "tiles")
    skip = settings.on_slide_error == "skip"
    # slide -> path and reason, for the slides on_slide_error: skip left out
    skipped: dict[str, dict[str, str]] = {}
    pool = training_patches(sheet, tiles_files, skipped if skip else None)
    model, meta = load_encoder_file(encoder_in, device)
    precision = resolve_precision(settings.precision, device)
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 autocast on the CPU: slower than fp32 on many CPUs, and not bit-exact")
    checkpointer = Checkpointer(
        checkpoint_dir, _inputs_fingerprint(settings, precision, encoder_in, pool, tiles_files)
    )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    # Per finished epoch: wall seconds, CPU seconds of this process, mean loss, patches seen.
    done = 0
    timing: dict[str, list[float]] = {
        "epoch_seconds": [],
        "epoch_cpu_seconds": [],
        "losses": [],
        "patches": [],
    }
    state = checkpointer.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        done, timing = state["done"], state["timing"]
        if state.get("skipped", {}).keys() - skipped.keys():
            skipped = dict(state["skipped"])
            pool = training_patches(sheet, tiles_files, skipped)
        log.info("resuming from epoch %d of %d", done, settings.epochs)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    check_patch_size(meta.arch, meta.arch_kwargs, pool.patch_size)
    augment = SimCLRAugment(pool.patch_size, meta.mean, meta.std, channel_order=meta.channel_order)
    log.info(
        "pretraining %s (SimCLR, NT-Xent T=%g) for %d epoch(s) on %d patches of %d training "
        "slide(s), batch %d; device %s, %s, %d loader worker(s)",
        meta.arch,
        settings.temperature,
        settings.epochs,
        len(pool.rows),
        len(pool.slides),
        settings.batch_size,
        device,
        precision,
        settings.workers,
    )
    state = {"pool": pool}

    def forget(error: SlideError, count: int) -> None:
        skip_slide(skipped, error)
        log.info("epoch %d starts again without %s", count + 1, error.slide_id)
        state["pool"] = training_patches(sheet, tiles_files, skipped)

    train_skipping_bad_slides(
        model,
        optimizer,
        done,
        settings.epochs,
        lambda count: _epochs(
            model, optimizer, augment, state["pool"], count, settings, device, precision, timing
        ),
        checkpointer,
        {"timing": timing, "skipped": skipped},
        forget if skip else None,
        on_epoch_end=on_epoch_end,
    )
    pool = state["pool"]
    summary = {
        **timing,
        "epochs": settings.epochs,
        "training_slides": len(pool.slides),
        "training_patches": int(len(pool.rows)),
        "skipped_slides": skipped,
        "initial_source": meta.source,
        "settings": {**asdict(settings), "precision": precision},
    }
    save_encoder_file(
        out,
        model.to(memory_format=torch.contiguous_format),
        source=os.fspath(encoder_in),
        source_sha256=file_digest(encoder_in),
        epoch=0,
        round=0,
        extra={**meta.extra, "pretrain": summary},
    )
    checkpointer.clear()
    log.info(
        "wrote %s; epoch times %s s, losses %s",
        out,
        ", ".join(f"{s:.1f}" for s in timing["epoch_seconds"]),
        ", ".join(f"{v:.4f}" for v in timing["losses"]),
    )
    return summary
