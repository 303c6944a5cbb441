"""Training one MIL aggregator on one round's features, selecting an epoch, scoring all.

The kept epoch is a fixed one (the authors' snapshot, config/paper.yaml) or the best on
validation, and the decision threshold is chosen on validation: no test label is used (the
authors chose both on test, which leaks). The job is resumable: every `checkpoint_every` epochs
the full state (model, optimizer, scheduler, the epoch-order generator, best-so-far model, epoch
log) is saved outside the declared outputs, and a rerun with the same settings and feature files
continues to the same result an uninterrupted run gives (bit for bit on the CPU).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hnm import __version__
from hnm.core.checkpoint import Checkpointer, fingerprint
from hnm.core.device import resolve_device
from hnm.core.errors import CheckpointError, HnmError
from hnm.core.formatting import fmt_metric
from hnm.core.progress import Progress
from hnm.core.threads import intra_op_threads, torch_threads
from hnm.evaluate.metrics import binary_metrics, f1_at_youden, roc_auc
from hnm.io.h5io import files_by_slide
from hnm.io.sheet import read_normalised_sheet
from hnm.mil import build_aggregator
from hnm.mil.data import Cohort, load_cohort
from hnm.mil.losses import bag_loss_batch, pair_loss_batch
from hnm.mil.outputs import TrainedModel, write_outputs
from hnm.mil.pairing import EpochOrder
from hnm.mil.scoring import score_bags
from hnm.mil.settings import MilSettings

log = logging.getLogger(__name__)

PROJECTION_DIM = 128  # output width of the largest per-row product of DSMIL and ABMIL


@dataclass
class _Selection:
    """Best-so-far (or fixed-epoch) model, carried through checkpoints."""

    key: tuple[float, ...] | None = None
    epoch: int | None = None
    state: dict[str, torch.Tensor] | None = None

    def offer(self, key: tuple[float, ...], epoch: int, model: torch.nn.Module) -> None:
        if self.key is None or key > self.key:  # strict: ties keep the earlier epoch
            self.key, self.epoch = key, epoch
            self.state = {
                name: value.detach().clone() for name, value in model.state_dict().items()
            }


@dataclass
class TrainingRun:
    """Everything a checkpoint must restore to continue exactly."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: EpochOrder
    selection: _Selection = field(default_factory=_Selection)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "order": self.order.state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "selection": {
                "key": self.selection.key,
                "epoch": self.selection.epoch,
                "state": self.selection.state,
            },
            "rows": self.rows,
        }

    def restore(self, state: dict[str, Any], device: torch.device) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.restore(state["order"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        chosen = state["selection"]
        self.selection = _Selection(
            key=tuple(chosen["key"]) if chosen["key"] is not None else None,
            epoch=chosen["epoch"],
            state=(
                {name: value.to(device) for name, value in chosen["state"].items()}
                if chosen["state"] is not None
                else None
            ),
        )
        self.rows = list(state["rows"])
        return int(state["epoch"]) + 1


def train_mil(
    sheet_path: str | os.PathLike[str],
    feature_files: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str] | None,
    settings: MilSettings,
    device: str = "auto",
    on_epoch_end: Callable[[int], None] | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Train, select on val, write OUT/{model.pt, epochs.csv, metrics.json, slides.parquet,
    scores/}.

    `threads` is the job's CPU thread budget (0: the cores this process may use); torch gets as
    many of them as the bags' size makes useful (hnm.core.threads), restored on return.

    `on_epoch_end(epoch)` runs after each epoch's checkpoint; tests raise from it to simulate a
    kill.
    Returns the metrics written to metrics.json.
    """
    torch_device = resolve_device(device)
    sheet = read_normalised_sheet(sheet_path)
    cohort = load_cohort(sheet, files_by_slide(feature_files, "features"), torch_device)
    train_pos = cohort.indices("train", 1)
    train_neg = cohort.indices("train", 0)
    val = cohort.indices("val")
    if len(train_pos) == 0 or len(train_neg) == 0:
        raise HnmError(
            f"the train split has {len(train_pos)} usable positive and {len(train_neg)} usable "
            "negative slide(s); MIL training needs both classes (check the sheet and the excluded "
            "slides)"
        )
    if settings.select == "best_val" and len(val) == 0:
        raise HnmError(
            "selecting the model on validation (select: best_val) needs validation slides, and "
            "none are usable; add val slides to the sheet or use select: fixed_epoch"
        )
    notes: list[str] = []
    metric_used = settings.select_metric
    val_labels = np.array([cohort.bags[i].label for i in val])
    val_has_both = len(set(val_labels.tolist())) == 2
    if settings.select == "best_val" and metric_used != "loss" and not val_has_both:
        metric_used = "loss"
        notes.append(
            f"validation split lacks a class, so val {settings.select_metric} is undefined; "
            "the model was selected on val loss instead"
        )
        log.warning(notes[-1])
    if settings.ranking_loss and settings.class_balance == "balanced":
        log.info("class_balance 'balanced' has no effect in pair mode: pairs are balanced already")

    run_fingerprint = fingerprint(
        {
            "settings": settings.as_dict(),
            "device": torch_device.type,
            "features": cohort.identities,
            "bags": [(b.slide_id, b.split, b.label) for b in cohort.bags],
            "code_version": __version__,
        }
    )
    checkpointer = Checkpointer(checkpoint_dir, run_fingerprint)
    run = new_run(settings, cohort.feature_dim, torch_device)
    start_epoch = 0
    saved = checkpointer.load()
    if saved is not None:
        start_epoch = run.restore(saved, torch_device)
        log.info("continuing MIL training at epoch %d of %d", start_epoch, settings.epochs)

    intra_op = mil_threads(threads, cohort, torch_device)
    log.info("torch intra-op threads: %d (job budget %s)", intra_op, threads or "all cores")
    with torch_threads(intra_op):
        _train_epochs(run, cohort, settings, metric_used, checkpointer, start_epoch, on_epoch_end)
        assert run.selection.state is not None and run.selection.epoch is not None
        run.model.load_state_dict(run.selection.state)
        trained = TrainedModel(run.model, run.rows, run.selection.epoch)
        metrics = write_outputs(
            Path(out_dir), trained, cohort, settings, metric_used, notes, torch_device
        )
    checkpointer.clear()
    return metrics


def mil_threads(job_threads: int, cohort: Cohort, device: torch.device) -> int:
    """Intra-op threads for MIL on `device`, sized to the largest product of a median bag
    (rows x d x 128, the query/attention projection); torch's own count on a GPU, where host
    threads only launch kernels."""
    if device.type != "cpu":
        return job_threads if job_threads > 0 else torch.get_num_threads()
    median_rows = float(np.median([bag.size for bag in cohort.bags])) if cohort.bags else 0.0
    return intra_op_threads(job_threads, median_rows * cohort.feature_dim * PROJECTION_DIM)


def _train_epochs(
    run: TrainingRun,
    cohort: Cohort,
    settings: MilSettings,
    metric_used: str,
    checkpointer: Checkpointer,
    start_epoch: int,
    on_epoch_end: Callable[[int], None] | None,
) -> None:
    """Epochs start_epoch.., each logged, offered to the selection and checkpointed on schedule."""
    train_pos, train_neg = cohort.indices("train", 1), cohort.indices("train", 0)
    val = cohort.indices("val")

    weights = class_weights(settings, len(train_pos), len(train_neg))
    with Progress(
        settings.epochs, "MIL training", log, initial=start_epoch, unit="epochs"
    ) as progress:
        for epoch in range(start_epoch, settings.epochs):
            started = time.perf_counter()
            lr = run.optimizer.param_groups[0]["lr"]
            train_loss = train_epoch(run, cohort, settings, train_pos, train_neg, weights)
            advance_schedule(run, settings)
            val_loss, val_auc, val_f1, val_f1_youden = validate(run.model, cohort, val, settings)
            seconds = time.perf_counter() - started
            run.rows.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_auc": val_auc,
                    "val_f1": val_f1,
                    "val_f1_youden": val_f1_youden,
                    "lr": lr,
                    "seconds": seconds,
                }
            )
            if settings.select == "best_val":
                run.selection.offer(
                    _selection_key(metric_used, val_loss, val_auc, val_f1), epoch, run.model
                )
            elif epoch == settings.snapshot_epoch:
                run.selection.offer((0.0,), epoch, run.model)
            progress.note(
                "epoch %d (of 0..%d): train loss %.4f, val loss %s, val auc %s, val f1 %s, lr %.3g, "
                "%.2f s",
                epoch,
                settings.epochs - 1,
                train_loss,
                fmt_metric(val_loss),
                fmt_metric(val_auc),
                fmt_metric(val_f1),
                lr,
                seconds,
            )
            if (epoch + 1) % settings.checkpoint_every == 0 and epoch + 1 < settings.epochs:
                checkpointer.save(run.state(epoch))
            progress.update(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch)


def new_run(settings: MilSettings, feature_dim: int, device: torch.device) -> TrainingRun:
    # A private RNG stream for the initial weights: the caller's torch RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build_aggregator(settings.aggregator, feature_dim, settings.dsmil)
    model.to(device)
    # One fused kernel per step on a GPU, where a pair step is launch-bound; CPU keeps the default.
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=settings.step_size, gamma=settings.gamma
    )
    return TrainingRun(model, optimizer, scheduler, EpochOrder(settings.seed))


def advance_schedule(run: TrainingRun, settings: MilSettings) -> None:
    """End of an epoch: StepLR stepped `scheduler_steps_per_epoch` times. The authors' code steps
    it twice per epoch (so their step_size 75 halves the rate every 37.5 epochs); the setting
    reproduces that without redefining what step_size counts."""
    for _ in range(settings.scheduler_steps_per_epoch):
        run.scheduler.step()


def class_weights(settings: MilSettings, n_pos: int, n_neg: int) -> dict[int, float]:
    """Per-bag loss weights of bag mode: n / (2 n_class) when balanced (each class weighs half)."""
    if settings.ranking_loss or settings.class_balance == "none":
        return {0: 1.0, 1: 1.0}
    total = n_pos + n_neg
    return {0: total / (2 * n_neg), 1: total / (2 * n_pos)}


def train_epoch(
    run: TrainingRun,
    cohort: Cohort,
    settings: MilSettings,
    train_pos: np.ndarray,
    train_neg: np.ndarray,
    weights: dict[int, float],
) -> float:
    """One pass with one optimizer step per pair (or per bag in bag mode), as the method steps.

    Each step is one batched forward of its bags (hnm.mil.batch); targets are made once per epoch
    and the loss sum stays on the device, so a step neither creates host tensors nor waits for a
    GPU, which is read once, at the end of the epoch.
    """
    run.model.train()
    device = cohort.features.device
    total = torch.zeros((), device=device)
    if settings.ranking_loss:
        pairs = run.order.pairs(train_pos, train_neg)
        targets = torch.tensor([1.0, 0.0], device=device)
        for pair in pairs:
            batch = cohort.batch(pair)
            bag_logits, instance_logits = run.model.forward_batch(batch)
            loss = pair_loss_batch(bag_logits, instance_logits, batch.lengths, targets, settings)
            total += _step(run.optimizer, loss)
        return float(total.item()) / max(len(pairs), 1)
    order = run.order.bags(np.concatenate([train_pos, train_neg]))
    labels = torch.tensor([float(bag.label) for bag in cohort.bags], device=device)
    for index in order:
        bag_logits, instance_logits = run.model.forward_batch(cohort.batch([index]))
        target = labels[index : index + 1]
        bag_losses = bag_loss_batch(bag_logits, instance_logits, target, settings)
        total += _step(run.optimizer, weights[cohort.bags[index].label] * bag_losses.sum())
    return float(total.item()) / max(len(order), 1)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """One optimizer step on `loss`; returns it detached, for the epoch's sum."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def validate(
    model: torch.nn.Module, cohort: Cohort, val: np.ndarray, settings: MilSettings
) -> tuple[float | None, float | None, float | None, float | None]:
    """(val loss, val AUC, val F1 at probability 0.5, val F1 at val's own Youden point); the loss
    is the unweighted bag-mode loss."""
    if len(val) == 0:
        return None, None, None, None
    scored = score_bags(model, cohort, val)
    device = scored.bag_logits.device
    labels = torch.tensor([float(cohort.bags[i].label) for i in val], device=device)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = settings.w_bag * bce(scored.bag_logits, labels)
    loss = loss + settings.w_instance * bce(scored.max_instance, labels)
    probs = torch.sigmoid(scored.bag_logits).cpu().numpy()
    y = labels.cpu().numpy()
    f1 = binary_metrics(y, probs >= 0.5)["f1"] if y.any() else None
    return float(loss.item()), roc_auc(y, probs), f1, f1_at_youden(y, probs)


def _selection_key(
    metric: str, loss: float | None, auc: float | None, f1: float | None
) -> tuple[float, ...]:
    """Larger is better; the val loss breaks ties of AUC/F1 (which plateau on small val sets)."""
    assert loss is not None
    if metric == "loss":
        return (-loss,)
    value = auc if metric == "auc" else f1
    return (value if value is not None else -math.inf, -loss)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The selected aggregator saved in model.pt, in eval mode."""
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
        # model.pt files from before the variants existed hold the fast one
        variant = saved.get("dsmil", "fast")
        model = build_aggregator(saved["aggregator"], int(saved["feature_dim"]), variant)
        model.load_state_dict(saved["state_dict"])
    except CheckpointError as error:
        raise CheckpointError(f"MIL model {path} cannot be loaded: {error}") from error
    except (OSError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"MIL model {path} cannot be loaded ({error}); retrain it") from error
    return model.to(device).eval()
