"""How many intra-op threads a CPU stage should give torch, from its thread budget and its work.

torch's default is one thread per visible core. On a shared machine (several Snakemake jobs at
once) that oversubscribes the cores, and on small problems each parallel region's barrier then
waits for a descheduled thread: MIL epochs were measured at 10-33 s with 2 threads per job versus
0.9-2.5 s with 1. A thread only pays when an operation has enough arithmetic to split, so the
count is the job's budget, capped by the cores this process may run on and by the size of the
stage's typical largest operation (one thread per MIN_WORK_PER_THREAD multiply-adds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Multiply-adds per thread below which splitting an op costs more than it saves when cores are
# shared: a Camelyon16 bag's largest product (8,000 x 512 x 128 = 5.2e8) stays on one thread.
MIN_WORK_PER_THREAD = 2**30


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, which SLURM and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


def intra_op_threads(job_threads: int, work_per_op: float) -> int:
    """Threads for ops of `work_per_op` multiply-adds within a budget of `job_threads` (0: the
    usable cores): at least 1, at most the budget, the cores, and the work's share."""
    budget = job_threads if job_threads > 0 else usable_cores()
    by_work = max(1, int(work_per_op // MIN_WORK_PER_THREAD))
    return max(1, min(budget, usable_cores(), by_work))


@contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """torch's intra-op thread count set to `count` for the block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
