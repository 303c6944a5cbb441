"""Batches for contrastive training: the two augmented views of a batch, and a loader whose
workers read whole batches ahead (pretraining's batches, fine-tuning's steps)."""

from __future__ import annotations

import torch

from hnm.contrastive.augment import SimCLRAugment


def make_views(
    augment: SimCLRAugment, patches: torch.Tensor, generator: torch.Generator, channels_last: bool
) -> torch.Tensor:
    """Two augmented views of every patch, stacked (view 1 of all, then view 2 of all).

    One augmentation call over the doubled batch: every copy draws its own parameters, and the
    kernels launch once instead of twice.
    """
    views = augment(torch.cat([patches, patches]), generator)
    return views.contiguous(memory_format=torch.channels_last) if channels_last else views


def batch_loader(
    dataset: torch.utils.data.Dataset, workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """A loader over a dataset whose items are whole batches (fine-tuning steps, pretraining
    batches): the dataset batches, the workers only read ahead."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        # Two steps queued per worker: enough to hide reading, and one step (both updates, about
        # 1,000 patches at 224 px) is about 150 MB of shared memory.
        prefetch_factor=2 if workers else None,
    )
