"""The order in which training bags are visited each epoch.

Pair mode (ranking loss on, docs/method.md): positive and negative bags are shuffled separately and
zipped, so each epoch has min(#pos, #neg) pairs and the surplus of the larger class is skipped for
that epoch only (a fresh shuffle next epoch gives those bags their turn). Every step sees one bag
of each class, so the classes are balanced by construction; no class weights are needed there.

Bag mode (ranking loss off): all bags in one shuffled order, one bag per step.

The generator is a numpy PCG64 whose state is plain data, so a checkpoint can store it and a
resumed run draws exactly the permutations an uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EpochOrder:
    """Draws each epoch's visiting order of bag indices from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.Generator(np.random.PCG64(seed))

    def pairs(self, positives: np.ndarray, negatives: np.ndarray) -> list[tuple[int, int]]:
        """min(#pos, #neg) (positive, negative) pairs from independent shuffles of each class."""
        shuffled_pos = self.generator.permutation(np.asarray(positives))
        shuffled_neg = self.generator.permutation(np.asarray(negatives))
        return [(int(p), int(n)) for p, n in zip(shuffled_pos, shuffled_neg)]

    def bags(self, indices: np.ndarray) -> list[int]:
        """Every bag once, shuffled."""
        return [int(i) for i in self.generator.permutation(np.asarray(indices))]

    def state(self) -> dict[str, Any]:
        return self.generator.bit_generator.state

    def restore(self, state: dict[str, Any]) -> None:
        self.generator.bit_generator.state = state
