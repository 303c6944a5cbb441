"""Fine-tuning's epoch plans: which patches every step of an epoch trains on (docs/method.md).

Why planned apart from training: every step's patch list is a function of (seed, global epoch)
alone, computed in the main process, so the sequence of batches never depends on how many loader
processes read them or on where a run was resumed. An epoch is one pass over the hard negatives H;
each step also draws pseudo-positives (negative-anchor update) and, from warm-up on, curriculum
positives with negatives (positive-anchor update) from successive permutations of their pools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from hnm.core.errors import HnmError
from hnm.finetune.settings import FinetuneSettings


@dataclass
class Pools:
    """The sampling pools as (slide code, patch index) arrays; slide codes index `slides`.

    `moving` holds, for the epochs whose curriculum or confident negatives are re-cut every epoch
    (sets rows with an epoch, hnm.mine.derived), that epoch's curriculum and negatives; `at`
    gives the pools of one epoch.
    """

    slides: list[str]
    hardneg: np.ndarray  # (n, 2) int64
    positives: np.ndarray  # pseudo-positives, for the negative-anchor update
    curriculum: np.ndarray  # for the positive-anchor update
    negatives: np.ndarray  # hard + confident negatives, for the positive-anchor update
    moving: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_sets(cls, sets: pd.DataFrame, sets_path: str) -> "Pools":
        slides = sorted(set(sets["slide_id"]))
        codes = pd.Categorical(sets["slide_id"], categories=slides).codes.astype(np.int64)
        table = np.stack([codes, sets["idx"].to_numpy(np.int64)], axis=1)
        epochs = sets["epoch"].to_numpy(np.int64) if "epoch" in sets.columns else None

        def pool(names: tuple[str, ...], epoch: int = -1) -> np.ndarray:
            chosen = sets["set"].isin(names).to_numpy()
            if epochs is not None:
                chosen = chosen & ((epochs == -1) | (epochs == epoch))
            return np.unique(table[chosen], axis=0).reshape(-1, 2)  # sorted, unique

        moving = {
            int(epoch): (pool(("curriculum",), epoch), pool(("hardneg", "confneg"), epoch))
            for epoch in (np.unique(epochs[epochs >= 0]) if epochs is not None else [])
        }
        pools = cls(
            slides,
            pool(("hardneg",)),
            pool(("pos",)),
            pool(("curriculum",)),
            pool(("hardneg", "confneg")),
            moving,
        )
        curricula = [c for c, _ in moving.values()] if moving else [pools.curriculum]
        for name, empty in (
            ("hardneg", len(pools.hardneg) == 0),
            ("pos", len(pools.positives) == 0),
            ("curriculum", any(len(c) == 0 for c in curricula)),
        ):
            if empty:
                raise HnmError(
                    f"sets file {sets_path} has no '{name}' patches; fine-tuning needs hard "
                    "negatives, pseudo-positives and curriculum positives (re-run `hnm mine`)"
                )
        return pools

    def at(self, epoch: int) -> "Pools":
        """The pools of global epoch `epoch` (the same object where nothing moves)."""
        if epoch not in self.moving:
            return self
        curriculum, negatives = self.moving[epoch]
        return replace(self, curriculum=curriculum, negatives=negatives, moving={})


@dataclass
class StepPlan:
    """The patches of one step: rows (slide code, idx), and how many belong to each part."""

    rows: np.ndarray  # (n, 2): update 1 negatives, positives, then update 2 negatives, positives
    sizes: tuple[int, int, int, int]


def _cycle(pool_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` pool indices from successive random permutations: all items before any repeat."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    rounds = math.ceil(count / pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(rounds)])[:count]


def steps_per_epoch(hard_negatives: int, settings: FinetuneSettings) -> int:
    """ceil(|H| / negatives per batch), capped by max_steps_per_epoch when set."""
    steps = math.ceil(hard_negatives / _negatives_per_batch(settings))
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    return steps


def _negatives_per_batch(settings: FinetuneSettings) -> int:
    count = int(math.floor(settings.neg_fraction * settings.batch_size + 0.5))
    return min(max(1, count), settings.batch_size - 1)


def plan_epoch(
    pools: Pools, settings: FinetuneSettings, global_epoch: int, positive_update: bool
) -> list[StepPlan]:
    """Every step of one epoch, from (seed, global epoch) alone.

    H is shuffled and split into `steps` near-equal chunks (so a short last batch never happens;
    with fewer hard negatives than one batch there is one step of all of them). Each step's
    positives keep the configured ratio to its negatives, so a smaller chunk gives a proportionally
    smaller batch rather than one dominated by positives.
    """
    rng = np.random.default_rng([settings.seed, global_epoch])
    per_batch = _negatives_per_batch(settings)
    ratio = (settings.batch_size - per_batch) / per_batch
    steps = math.ceil(len(pools.hardneg) / per_batch)
    chunks = np.array_split(rng.permutation(len(pools.hardneg)), steps)
    if settings.max_steps_per_epoch:
        chunks = chunks[: settings.max_steps_per_epoch]
    negatives1 = [len(chunk) for chunk in chunks]
    positives1 = [max(1, int(math.floor(n * ratio + 0.5))) for n in negatives1]
    if positive_update:
        totals = [n + p for n, p in zip(negatives1, positives1)]
        curriculum2 = [
            max(1, int(math.floor(t * settings.pos_fraction_positive_mode + 0.5))) for t in totals
        ]
        negatives2 = [t - c for t, c in zip(totals, curriculum2)]
    else:
        curriculum2 = negatives2 = [0] * len(chunks)
    positive_draw = _cycle(len(pools.positives), sum(positives1), rng)
    negative_draw = _cycle(len(pools.negatives), sum(negatives2), rng)
    curriculum_draw = _cycle(len(pools.curriculum), sum(curriculum2), rng)
    plans = []
    offsets = [0, 0, 0]
    for step, chunk in enumerate(chunks):
        parts = [pools.hardneg[chunk]]
        for which, (pool, draw, counts) in enumerate(
            (
                (pools.positives, positive_draw, positives1),
                (pools.negatives, negative_draw, negatives2),
                (pools.curriculum, curriculum_draw, curriculum2),
            )
        ):
            parts.append(pool[draw[offsets[which] : offsets[which] + counts[step]]])
            offsets[which] += counts[step]
        plans.append(
            StepPlan(
                rows=np.concatenate(parts).reshape(-1, 2),
                sizes=(negatives1[step], positives1[step], negatives2[step], curriculum2[step]),
            )
        )
    return plans
