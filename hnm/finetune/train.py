"""SupCon fine-tuning of the encoder on the mined sets: encoder_r -> encoder_{r+1} (docs/method.md).

Each step makes two updates: (1) "negative anchors" on 80% hard negatives + 20% pseudo-positives;
(2) from warm-up on, "positive anchors" on 5% curriculum positives + 95% negatives (hard negatives,
plus confident negatives when the sets carry them). An epoch is one pass over the hard negatives H,
so its cost follows neg_ratio, which is the paper's saving.

Where the time goes and how it is spent well:
- Every step's patch list is planned in the main process from (seed, global epoch)
  (hnm.finetune.plan), so the sequence of batches never depends on how many loader processes there
  are or on where a run was resumed.
- Patches are read by DataLoader worker processes (each keeps one open reader per slide, the
  cheapest hnm.io.patches.open_patch_reader finds: JPEG tiles where the slide allows) several
  steps ahead of the training step; pixels travel as uint8, pinned on CUDA.
- SimCLR augmentations run batched on the training device (hnm.contrastive.augment); bf16 autocast and
  channels_last on CUDA.
- Uncertain patches are never sampled: SupCon masks them out of every term, so a view of one would
  cost a forward/backward pass and contribute exactly nothing.

Resume: a checkpoint after every epoch (model, optimizer, epoch times, skipped slides),
fingerprinted by the settings and the digests of the sets and input encoder files. A killed job
restarts at the next epoch and, on the CPU, ends with the same weights as an uninterrupted run.

A slide whose pixels cannot be read (a file corrupted or truncated after extraction) stops the job,
or with on_slide_error: skip is dropped from this round's sets: the epoch it failed in starts again
from that epoch's starting weights without it, and the output encoder lists it (skipped_slides), so
results/qc/failed_slides.tsv names it and the reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from hnm.contrastive.augment import SimCLRAugment
from hnm.contrastive.batches import batch_loader, make_views
from hnm.core.checkpoint import Checkpointer, file_digest, fingerprint
from hnm.core.device import resolve_precision
from hnm.core.errors import HnmError, SlideError
from hnm.core.progress import Progress
from hnm.core.restart import train_skipping_bad_slides
from hnm.encoders.inputs import check_patch_size
from hnm.encoders.model_file import load_encoder_file, save_encoder_file
from hnm.finetune.adapters import prepare_training, trainable_parameters
from hnm.finetune.plan import Pools, StepPlan, plan_epoch, steps_per_epoch
from hnm.finetune.reading import StepPatches, skip_slide, usable_pools
from hnm.finetune.settings import FinetuneSettings
from hnm.finetune.supcon import supcon_loss
from hnm.io.h5io import files_by_slide
from hnm.io.patches import JpegTileReader, PatchReader, ReadFailure
from hnm.mine.sets import read_sets

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- training


def contrastive_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    views: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    settings: FinetuneSettings,
    precision: str,
) -> torch.Tensor:
    autocast = torch.autocast(
        device_type=views.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )
    with autocast:
        projections = model(views)
    loss = supcon_loss(
        projections, labels.repeat(2), mode, settings.temperature, settings.supcon_average
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _labels(negatives: int, positives: int, device: torch.device) -> torch.Tensor:
    return torch.cat(
        [torch.zeros(negatives, dtype=torch.long), torch.ones(positives, dtype=torch.long)]
    ).to(device)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: SimCLRAugment,
    plans: list[StepPlan],
    batches: Iterator[torch.Tensor],
    settings: FinetuneSettings,
    global_epoch: int,
    device: torch.device,
    precision: str,
) -> dict[str, float]:
    """One epoch over `plans`, whose patches `batches` yields in order; returns mean losses.

    Augmentation draws come from (seed, global epoch), like the plans themselves.
    """
    model.train()
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + global_epoch)
    channels_last = device.type == "cuda"
    sums = torch.zeros(2, device=device)
    with Progress(len(plans), f"fine-tuning epoch {global_epoch}", log, unit="steps") as progress:
        for step, patches in zip(range(len(plans)), batches):
            if isinstance(patches, ReadFailure):
                raise patches.error()
            lr = settings.rate(global_epoch, step, len(plans))
            for group in optimizer.param_groups:
                group["lr"] = lr
            patches = patches.to(device, non_blocking=True)
            n1, p1, n2, c2 = plans[step].sizes
            parts = (
                (patches[: n1 + p1], n1, p1, "negative"),
                (patches[n1 + p1 :], n2, c2, "positive"),
            )
            for which, (images, negatives, positives, mode) in enumerate(parts):
                if negatives + positives:
                    views = make_views(augment, images, generator, channels_last)
                    sums[which] += contrastive_update(
                        model,
                        optimizer,
                        views,
                        _labels(negatives, positives, device),
                        mode,
                        settings,
                        precision,
                    )
            progress.update(1)
    means = (sums / max(1, len(plans))).tolist()
    return {"loss_negative": means[0], "loss_positive": means[1]}


def make_optimizer(
    model: torch.nn.Module, settings: FinetuneSettings, state: dict[str, Any] | None
) -> torch.optim.SGD:
    """SGD over backbone and head (under adapters: adapters and head); a carried-over state
    keeps its momentum buffers.

    The hyper-parameters are always this run's settings (a state saved with other ones would
    otherwise override them silently).
    """
    optimizer = torch.optim.SGD(
        trainable_parameters(model),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    if state:
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError) as error:
            log.warning(
                "the input encoder's optimizer state does not fit (%s); starting afresh", error
            )
            return make_optimizer(model, settings, None)
        for group in optimizer.param_groups:
            group.update(momentum=settings.momentum, weight_decay=settings.weight_decay)
    return optimizer


def scheduler_state(settings: FinetuneSettings, epoch: int) -> dict[str, Any]:
    """The schedule is a pure function of the global epoch; this records which function."""
    return {
        "kind": f"constant_then_cosine_{settings.lr_schedule}",
        "base_lr": settings.lr,
        "cosine_after": settings.cosine_after,
        "total_epochs": settings.total_epochs,
        "epoch": epoch,
    }


def job_epochs(
    settings: FinetuneSettings, round_index: int, start_epoch: int, encoder_in: Any
) -> int:
    """Epochs this job trains: from the input encoder's epoch to the start of the next round
    (settings.round_start); an encoder already past that point is refused, not overtrained."""
    end = settings.round_start(round_index + 1)
    if end <= start_epoch:
        raise HnmError(
            f"encoder {encoder_in} (round {round_index}) has trained {start_epoch} epochs, but the "
            f"schedule (epochs_per_round {settings.epochs_per_round}, refresh_offset "
            f"{settings.refresh_offset}, rounds {settings.rounds}) ends round {round_index} at "
            f"epoch {end}; re-run the earlier rounds with the current settings"
        )
    return end - start_epoch


def finetune(
    sheet: pd.DataFrame,
    sets_path: str | os.PathLike[str],
    tiles: Iterable[str | os.PathLike[str]],
    encoder_in: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str] | None,
    settings: FinetuneSettings,
    device: torch.device,
    workers: int = 2,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `encoder_in` over its round's epochs (settings.round_epochs) and write `out`;
    returns a summary."""
    all_sets = read_sets(sets_path)
    tiles_files = files_by_slide(tiles, "tiles")
    model, meta = load_encoder_file(encoder_in, device)
    prepare_training(model, settings, os.fspath(encoder_in), device)
    start_epoch = meta.epoch
    epochs = job_epochs(settings, meta.round, start_epoch, encoder_in)
    precision = resolve_precision(settings.precision, device)
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 autocast on the CPU: slower than fp32 on many CPUs, and not bit-exact")
    checkpointer = Checkpointer(
        checkpoint_dir,
        fingerprint(
            {
                **asdict(settings),
                "precision": precision,
                "sets_sha256": file_digest(sets_path),
                "encoder_sha256": file_digest(encoder_in),
            }
        ),
    )
    optimizer = make_optimizer(model, settings, meta.optimizer)
    # Per finished epoch: wall seconds, CPU seconds of this process (steadier than wall time on
    # a shared machine) and mean losses; carried through checkpoints into the output file.
    done, timing = 0, {"epoch_seconds": [], "epoch_cpu_seconds": [], "losses": []}
    skipped: dict[str, dict[str, str]] = {}  # slide -> path and reason (on_slide_error: skip)
    state = checkpointer.load()
    if state is not None:
        model.load_trainable_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        done, timing = state["done"], state["timing"]
        skipped = state.get("skipped", {})
        log.info(
            "resuming from epoch %d (global epoch %d) of %d",
            done,
            start_epoch + done,
            epochs,
        )
    skip = settings.on_slide_error == "skip"
    pools, readers = usable_pools(all_sets, str(sets_path), sheet, tiles_files, skipped, skip)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    first = pools.at(start_epoch)
    patch_size = readers[0].patch_size
    check_patch_size(meta.arch, meta.arch_kwargs, patch_size)
    if meta.patch_size != patch_size:
        log.info(
            "training at the tiles' patch size %d px (the encoder's nominal size is %d)",
            patch_size,
            meta.patch_size,
        )
    augment = SimCLRAugment(patch_size, meta.mean, meta.std, channel_order=meta.channel_order)
    log.info(
        "fine-tuning %s from global epoch %d for %d epoch(s): |H| = %d hard negatives, %d "
        "pseudo-positives, %d curriculum, %d negatives for the positive update; %d steps/epoch of "
        "batch %d; device %s, %s, %d loader worker(s)",
        meta.arch,
        start_epoch,
        epochs,
        len(first.hardneg),
        len(first.positives),
        len(first.curriculum),
        len(first.negatives),
        steps_per_epoch(len(pools.hardneg), settings),
        settings.batch_size,
        device,
        precision,
        workers,
    )
    run = EpochRun(
        model, optimizer, augment, settings, start_epoch, epochs, device, precision, workers
    )
    state = {"pools": pools, "readers": readers}

    def forget(error: SlideError, count: int) -> None:
        skip_slide(skipped, error, start_epoch + count)
        state["pools"], state["readers"] = usable_pools(
            all_sets, str(sets_path), sheet, tiles_files, skipped, skip
        )

    train_skipping_bad_slides(
        model,
        optimizer,
        done,
        epochs,
        lambda count: run.epochs(state["pools"], state["readers"], count, timing),
        checkpointer,
        {"timing": timing, "skipped": skipped},
        forget if skip else None,
        epoch_offset=start_epoch,
        on_epoch_end=on_epoch_end,
    )
    pools = state["pools"]
    end_epoch = start_epoch + epochs
    extra = {
        **timing,
        "hard_negatives": int(len(pools.hardneg)),
        "pseudo_positives": int(len(pools.positives)),
        "curriculum_positives": int(len(pools.at(start_epoch).curriculum)),
        "steps_per_epoch": steps_per_epoch(len(pools.hardneg), settings),
        "sets": os.fspath(sets_path),
        "sets_sha256": file_digest(sets_path),
        "settings": {**asdict(settings), "precision": precision},
        "skipped_slides": skipped,
    }
    save_encoder_file(
        out,
        model.to(memory_format=torch.contiguous_format),
        source=os.fspath(encoder_in),
        source_sha256=file_digest(encoder_in),
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler_state(settings, end_epoch),
        epoch=end_epoch,
        round=meta.round + 1,
        extra=extra,
    )
    checkpointer.clear()
    log.info(
        "wrote %s (global epoch %d); epoch times %s s",
        out,
        end_epoch,
        ", ".join(f"{s:.1f}" for s in timing["epoch_seconds"]),
    )
    return extra


@dataclass
class EpochRun:
    """What every epoch of one fine-tuning job shares: the model, its optimizer and the setup."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    augment: SimCLRAugment
    settings: FinetuneSettings
    start_epoch: int
    job_epochs: int  # this job's: the round's epochs from start_epoch on
    device: torch.device
    precision: str
    workers: int

    def epochs(
        self,
        pools: Pools,
        readers: list[PatchReader | JpegTileReader],
        done: int,
        timing: dict[str, list[Any]],
    ) -> Iterator[int]:
        """Train the epochs after `done`, yielding the count done after each (to checkpoint).

        Every remaining epoch is planned up front and read through ONE loader, so the readers run
        ahead across epoch boundaries (and checkpoint writes) instead of draining and refilling.
        """
        settings = self.settings
        epochs = {
            local: plan_epoch(
                pools.at(self.start_epoch + local),
                settings,
                self.start_epoch + local,
                self.start_epoch + local >= settings.warmup,
            )
            for local in range(done, self.job_epochs)
        }
        batches = iter(
            batch_loader(
                StepPatches([p for plans in epochs.values() for p in plans], readers),
                self.workers,
                self.device,
            )
        )
        for local, plans in epochs.items():
            global_epoch = self.start_epoch + local
            started, cpu_started = time.perf_counter(), time.process_time()
            epoch_losses = train_epoch(
                self.model,
                self.optimizer,
                self.augment,
                plans,
                batches,
                settings,
                global_epoch,
                self.device,
                self.precision,
            )
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - started
            timing["epoch_seconds"].append(seconds)
            timing["epoch_cpu_seconds"].append(time.process_time() - cpu_started)
            timing["losses"].append(epoch_losses)
            patches = sum(int(p.rows.shape[0]) for p in plans)
            log.info(
                "epoch %d (%d/%d of this round): %d steps, %s update(s), loss neg %.4f pos %.4f, "
                "lr %.5f, %.1f s, %.1f patches/s",
                global_epoch,
                local + 1,
                self.job_epochs,
                len(plans),
                "both" if global_epoch >= settings.warmup else "negative-anchor",
                epoch_losses["loss_negative"],
                epoch_losses["loss_positive"],
                self.optimizer.param_groups[0]["lr"],
                seconds,
                patches / seconds if seconds else float("nan"),
            )
            yield local + 1
