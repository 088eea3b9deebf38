"""Prioritized sampling with replacement: P(i) = p_i^e / sum_k p_k^e, on a sum tree."""

from __future__ import annotations

from typing import Any

import numpy as np

from .sum_tree import SumTree


class PrioritizedSampler:
    """Draws positions 0..n-1 with replacement, position i with probability p_i^e / sum_k p_k^e.

    `exponent` (e) sharpens (> 1) or flattens (< 1) the priorities; e = 0 is uniform. Seeded draws are
    reproducible, and `state` / `set_state` carry the generator across a checkpoint.
    """

    def __init__(self, priorities: np.ndarray, exponent: float = 1.0, seed: int | None = None):
        if exponent < 0:
            raise ValueError(f"the priority exponent must be >= 0, got {exponent}")
        self.exponent = float(exponent)
        self._tree = SumTree.from_values(self._weights(priorities))
        self._size = int(np.asarray(priorities).size)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    @property
    def total(self) -> float:
        """sum_k p_k^e."""
        return self._tree.total

    def sample(self, batch_size: int) -> np.ndarray:
        """`batch_size` positions drawn independently."""
        if self._tree.total <= 0:
            raise ValueError("nothing to sample: every priority is zero")
        return self._tree.find(self._rng.random(batch_size) * self._tree.total)

    def update(self, positions: np.ndarray, priorities: np.ndarray) -> None:
        """Change the priorities of some positions (O(log n) each)."""
        self._tree.set(positions, self._weights(priorities))

    def probabilities(self) -> np.ndarray:
        """P(i) for every position."""
        weights = self._tree.get(np.arange(self._size))
        return weights / weights.sum()

    def state(self) -> dict[str, Any]:
        return self._rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def _weights(self, priorities: np.ndarray) -> np.ndarray:
        p = np.asarray(priorities, dtype=np.float64)
        if p.size and (not np.all(np.isfinite(p)) or p.min() < 0):
            raise ValueError("priorities must be finite and non-negative")
        # 0 ** 0 is 1 in numpy; a zero priority must stay unsampled whatever the exponent.
        return np.where(p > 0, p**self.exponent, 0.0)
