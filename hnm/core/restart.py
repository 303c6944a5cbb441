"""Training epochs that survive an unreadable slide (on_slide_error: skip), shared by the stages
that train on pixels (pretraining, fine-tuning).

An epoch that meets a slide it cannot read starts again from the weights it started from, without
that slide, so the result is what a run that never had the slide would give; the finished epochs
before it stay (they were checkpointed). Without skip the slide's error ends the job.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch

from hnm.core.errors import SlideError


def train_skipping_bad_slides(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    done: int,
    total: int,
    epochs: Callable[[int], Iterator[int]],
    finished: Callable[[int], None],
    skip_slide: Callable[[SlideError, int], None] | None,
) -> int:
    """Run `epochs(done)` (a generator yielding the count done after each epoch) until `total`
    are done; `finished(count)` after each (checkpointing); `skip_slide(error, done)` forgets a
    slide before its epoch starts again, or is None to let the error end the job."""
    while done < total:
        before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
        try:
            for count in epochs(done):
                done = count
                finished(done)
                before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
        except SlideError as error:
            if skip_slide is None:
                raise
            model.load_state_dict(before[0])
            optimizer.load_state_dict(before[1])
            skip_slide(error, done)
    return done
