"""The intra-op thread policy: the job's budget, capped by the cores and by the work of an op."""

from __future__ import annotations

import torch

from hnm.core import threads
from hnm.core.threads import MIN_WORK_PER_THREAD, intra_op_threads, torch_threads


def test_small_work_gets_one_thread_whatever_the_budget(monkeypatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    assert intra_op_threads(8, 2000 * 512 * 128) == 1
    assert intra_op_threads(0, 0) == 1


def test_large_work_is_capped_by_budget_and_cores(monkeypatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert intra_op_threads(2, 100 * MIN_WORK_PER_THREAD) == 2
    assert intra_op_threads(0, 100 * MIN_WORK_PER_THREAD) == 4
    assert intra_op_threads(16, 3 * MIN_WORK_PER_THREAD) == 3


def test_torch_threads_restores_the_previous_count() -> None:
    previous = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous
