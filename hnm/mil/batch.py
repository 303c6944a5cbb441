"""Several bags in one forward: rows packed bag after bag, per-patch scalars padded and masked.

A training step of pair mode holds two bags and validation holds dozens. Running them one bag at a
time costs a full set of kernel launches (and Python dispatch) per bag, which is what bounds an
epoch on a GPU: the arithmetic of a bag (8,000 x 512 patches) takes microseconds there. So the
aggregators take a `BagBatch`:

- the heavy per-row projections (d -> 128) run on the bags' rows, concatenated into one matrix on
  a GPU (one launch) but bag by bag on a CPU, where concatenating would copy every feature row for
  no gain (the CPU is bound by the arithmetic, not by launches);
- per-patch scalars (instance logits, attention logits, similarities) are padded to (B, Lmax), so
  the critical instance is a masked argmax, the attention a masked softmax, the max-instance BCE a
  masked max and the ranking loss a masked top-K; per-patch vectors (queries) stay per bag, since
  padding them would copy more than the products they feed cost;
- pooling A^T h is one GEMV per bag on the bag's own rows (a view), so h is never padded (nor is
  a per-row layer's output that an aggregator pools instead of h).

On a CPU this removes nothing measurable: a Camelyon16-sized step is ~75% matrix products, at
the core's peak (bench/bench_mil.py prints the floor). The gains are on a GPU, where it removes
per-bag launches and, by picking critical instances with index_select, the read-back that
indexing by a 0-d device tensor does (a synchronisation per bag in the per-bag loop).

Lengths are host integers, so building a batch never reads back from the device, and the mask is
made on the device from a cached row of ones (no host-to-device copy, which from pageable memory
would synchronise a GPU every step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

NEG_INF = float("-inf")


@dataclass(frozen=True)
class BagBatch:
    """B bags: their feature rows (views, no copies) and the mask of their padded layout."""

    parts: tuple[torch.Tensor, ...]  # bag b's rows (N_b, d)
    lengths: tuple[int, ...]  # N_b, on the host
    mask: torch.Tensor  # (B, Lmax) bool, True on a bag's real rows
    concat: bool  # project the rows as one concatenated matrix (a GPU) or bag by bag (a CPU)

    @property
    def size(self) -> int:
        return len(self.parts)

    @property
    def max_length(self) -> int:
        return max(self.lengths)

    @property
    def device(self) -> torch.device:
        return self.parts[0].device


def make_batch(
    parts: Sequence[torch.Tensor], ones: torch.Tensor | None = None, concat: bool | None = None
) -> BagBatch:
    """A batch of the given bags; `ones` is a cached (>= max N_b,) bool row on their device;
    `concat` defaults to True on a GPU (tests force either path on the CPU)."""
    lengths = tuple(int(part.shape[0]) for part in parts)
    if ones is None or ones.shape[0] < max(lengths):
        ones = torch.ones(max(lengths), dtype=torch.bool, device=parts[0].device)
    mask = pad_sequence([ones[:n] for n in lengths], batch_first=True, padding_value=False)
    if concat is None:
        concat = parts[0].device.type == "cuda"
    return BagBatch(tuple(parts), lengths, mask, concat)


def map_rows(fn: Callable[[torch.Tensor], Any], batch: BagBatch) -> list[Any]:
    """fn applied to every row of every bag, returned per bag (see the module docstring); fn
    returns a tensor or a tuple of tensors with one row per input row."""
    if batch.size > 1 and batch.concat:
        out = fn(torch.cat(batch.parts))
        if isinstance(out, tuple):
            return list(zip(*(part.split(batch.lengths) for part in out)))
        return list(out.split(batch.lengths))
    return [fn(part) for part in batch.parts]


def pad(values: Sequence[torch.Tensor], fill: float = 0.0) -> torch.Tensor:
    """Per-bag tensors (N_b, ...) as one (B, Lmax, ...) tensor; differentiable."""
    return pad_sequence(list(values), batch_first=True, padding_value=fill)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over each bag's real entries of (B, Lmax); padding gets weight exactly 0."""
    return torch.softmax(logits.masked_fill(~mask, NEG_INF), dim=1)


def pool(weights: torch.Tensor, batch: BagBatch) -> torch.Tensor:
    """(B, d): bag b's rows weighted by weights[b, :N_b] (zero on padding), one GEMV per bag."""
    return pool_rows(weights, batch.parts)


def pool_rows(weights: torch.Tensor, rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, d): rows[b] (N_b, d) weighted by weights[b, :N_b]; `pool` of per-bag rows other than
    the batch's features (a layer's output, as in the reference DSMIL)."""
    return torch.stack([weights[b, : part.shape[0]] @ part for b, part in enumerate(rows)])


def masked_max(padded: torch.Tensor) -> torch.Tensor:
    """(B,) max over each bag's entries; padding must be -inf (as the aggregators return it)."""
    return padded.max(dim=1).values


def masked_top_k_mean(padded: torch.Tensor, lengths: Sequence[int], k: int) -> torch.Tensor:
    """(B,) mean of each bag's min(k, N_b) largest entries; padding must be -inf."""
    width = min(k, padded.shape[1])
    top = torch.topk(padded, width, dim=1).values
    if min(lengths) >= width:
        return top.mean(dim=1)
    return torch.stack([top[b, : min(k, n)].mean() for b, n in enumerate(lengths)])
