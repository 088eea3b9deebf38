"""A sum tree: leaves hold non-negative values, each node the sum of its children.

Updates and prefix-sum searches take O(log n); both are vectorised over a batch of indices.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Sum tree over `capacity` leaves, all zero at first.

    `set(index, value)` writes leaves, `get(index)` reads them, `total` is their sum, and
    `find(mass)` returns, for each mass in [0, total), the leaf i with
    sum(leaves[:i]) <= mass < sum(leaves[:i + 1]).
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._depth = max(0, (capacity - 1).bit_length())
        self._leaves = 1 << self._depth  # a power of two >= capacity
        # Node 1 is the root; node k has children 2k and 2k + 1; leaves are nodes [L, 2L).
        self._nodes = np.zeros(2 * self._leaves, dtype=np.float64)

    @classmethod
    def from_values(cls, values: np.ndarray) -> SumTree:
        """A tree holding `values`, built in O(n)."""
        values = np.asarray(values, dtype=np.float64)
        tree = cls(max(1, values.size))
        tree._check(values)
        leaves = tree._leaves
        tree._nodes[leaves : leaves + values.size] = values
        level = leaves
        while level > 1:  # each level is the pairwise sum of the one below
            tree._nodes[level // 2 : level] = tree._nodes[level : 2 * level].reshape(-1, 2).sum(axis=1)
            level //= 2
        return tree

    @property
    def total(self) -> float:
        return float(self._nodes[1])

    def get(self, index: np.ndarray | int) -> np.ndarray:
        return self._nodes[self._leaves + self._index(index)]

    def set(self, index: np.ndarray | int, value: np.ndarray | float) -> None:
        index = self._index(index)
        value = np.broadcast_to(np.asarray(value, dtype=np.float64), index.shape)
        self._check(value)
        nodes = np.unique(index + self._leaves)
        self._nodes[index + self._leaves] = value
        while nodes[0] > 1:  # recompute the ancestors from their children: no drift from deltas
            nodes = np.unique(nodes // 2)
            self._nodes[nodes] = self._nodes[2 * nodes] + self._nodes[2 * nodes + 1]

    def find(self, mass: np.ndarray) -> np.ndarray:
        mass = np.array(mass, dtype=np.float64, ndmin=1)
        node = np.ones(mass.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * node
            left_sum = self._nodes[left]
            # Go right when the mass is past the left subtree, unless rounding would lead into an empty
            # right subtree (possible only when mass is within float error of the total).
            right = (mass >= left_sum) & (self._nodes[left + 1] > 0)
            mass = np.where(right, mass - left_sum, mass)
            node = left + right
        return node - self._leaves

    def _index(self, index: np.ndarray | int) -> np.ndarray:
        index = np.array(index, dtype=np.int64, ndmin=1)
        if index.size and (index.min() < 0 or index.max() >= self.capacity):
            raise IndexError(f"leaf index out of range [0, {self.capacity})")
        return index

    @staticmethod
    def _check(values: np.ndarray) -> None:
        if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0):
            raise ValueError("sum tree values must be finite and non-negative")
