"""Training epochs that survive an unreadable slide (on_slide_error: skip), shared by the stages
that train on pixels (pretraining, fine-tuning).

An epoch that meets a slide it cannot read starts again from the weights it started from, without
that slide, so the result is what a run that never had the slide would give; the finished epochs
before it stay (they were checkpointed). Without skip the slide's error ends the job.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hnm.core.checkpoint import Checkpointer
from hnm.core.errors import SlideError


def train_skipping_bad_slides(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    done: int,
    total: int,
    epochs: Callable[[int], Iterator[int]],
    checkpointer: Checkpointer,
    record: dict[str, Any],
    skip_slide: Callable[[SlideError, int], None] | None,
    epoch_offset: int = 0,
    on_epoch_end: Callable[[int], None] | None = None,
) -> int:
    """Run `epochs(done)` (a generator yielding the count done after each epoch) until `total`
    are done. After each, the checkpoint holds the model, the optimizer, the count done, the
    encoder's epoch (`epoch_offset` + count) and `record` (the caller's live timing and skipped
    slides), then `on_epoch_end(count)` runs. `skip_slide(error, done)` forgets a slide before its
    epoch starts again, or is None to let the error end the job."""
    while done < total:
        before = copy.deepcopy((_state(model), optimizer.state_dict()))
        try:
            for count in epochs(done):
                done = count
                checkpointer.save(
                    {
                        "epoch": epoch_offset + done,
                        "done": done,
                        "model": _state(model),
                        "optimizer": optimizer.state_dict(),
                        **record,
                    }
                )
                if on_epoch_end is not None:
                    on_epoch_end(done)
                before = copy.deepcopy((_state(model), optimizer.state_dict()))
        except SlideError as error:
            if skip_slide is None:
                raise
            _load_state(model, before[0])
            optimizer.load_state_dict(before[1])
            skip_slide(error, done)
    return done


def _state(model: torch.nn.Module) -> dict[str, Any]:
    """What must be kept to resume: a model with a frozen backbone under adapters says which
    part trains (SimCLRModel.trainable_state), so gigabytes of frozen weights are not copied."""
    trainable = getattr(model, "trainable_state", None)
    return trainable() if trainable is not None else model.state_dict()


def _load_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    load = getattr(model, "load_trainable_state", None)
    if load is not None:
        load(state)
    else:
        model.load_state_dict(state)
