"""Scoring many bags with one aggregator: validation each epoch, and every slide at the end.

Bags are sorted by size and run in batched forwards (hnm.mil.batch) of at most MAX_PADDED_ROWS
padded rows, so padding stays small and the padded queries (rows x 128 floats) stay bounded, and
results come back to the host once per call, not once per bag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hnm.mil.batch import masked_max
from hnm.mil.data import Cohort

MAX_PADDED_ROWS = 2**18  # B x Lmax of one scoring batch: 128 MB of padded fp32 queries


@dataclass
class BagScores:
    """Scores of bags, in the order they were asked for."""

    bag_logits: torch.Tensor  # (B,), on the device
    max_instance: torch.Tensor  # (B,), on the device
    instance_logits: list[np.ndarray] | None  # per bag (N_b,) float32, when asked for


def chunks_by_size(lengths: np.ndarray, budget: int = MAX_PADDED_ROWS) -> Iterator[np.ndarray]:
    """Positions into `lengths`, shortest bags first, grouped so count x longest <= budget
    (a bag larger than the budget goes alone)."""
    order = np.argsort(lengths, kind="stable")
    start = 0
    for stop in range(1, len(order) + 1):
        too_big = stop < len(order) and (stop + 1 - start) * lengths[order[stop]] > budget
        if stop == len(order) or too_big:
            yield order[start:stop]
            start = stop


@torch.no_grad()
def score_bags(
    model: torch.nn.Module,
    cohort: Cohort,
    indices: np.ndarray,
    keep_instances: bool = False,
    budget: int = MAX_PADDED_ROWS,
) -> BagScores:
    """Bag logits and max instance logits of the given bags (eval mode), in batched forwards."""
    model.eval()
    device = cohort.features.device
    indices = np.asarray(indices, dtype=np.int64)
    bag_logits = torch.zeros(len(indices), device=device)
    max_instance = torch.zeros(len(indices), device=device)
    instances: list[np.ndarray] = [np.zeros(0, np.float32)] * len(indices)
    lengths = np.array([cohort.bags[int(i)].size for i in indices], dtype=np.int64)
    for positions in chunks_by_size(lengths, budget):
        batch = cohort.batch(indices[positions])
        chunk_bags, chunk_instances = model.forward_batch(batch)
        where = torch.as_tensor(positions, device=device)
        bag_logits.index_copy_(0, where, chunk_bags)
        max_instance.index_copy_(0, where, masked_max(chunk_instances))
        if keep_instances:
            host = chunk_instances.float().cpu().numpy()
            for row, (position, n) in enumerate(zip(positions, batch.lengths)):
                instances[int(position)] = host[row, :n].copy()
    return BagScores(bag_logits, max_instance, instances if keep_instances else None)
