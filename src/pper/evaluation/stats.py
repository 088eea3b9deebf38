"""Bootstrap intervals over tasks, the statistics behind every comparison pper reports.

Both functions resample *tasks* with replacement (a task is the unit: its samples and tests are not
independent), take the mean of each resample, and give the 2.5th and 97.5th percentiles of those means:
the percentile bootstrap's 95% interval. Every call draws its resamples from a fresh generator seeded with
`seed`, so an interval depends only on its own values: two comparisons over the same number of tasks use
the same resampled index sets, and adding a comparison never moves another one's interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (one per task) and its 95% percentile-bootstrap interval.

    Each of `resamples` resamples draws len(values) tasks with replacement (generator
    `numpy.random.default_rng(seed)`); low and high are the 2.5th and 97.5th percentiles of their means.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty list of per-task values, got shape {x.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // x.size)  # bounds the index matrix to ~16 MB for any number of tasks
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start : start + n] = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(low), float(high)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high) of the per-task difference a - b with its paired 95% bootstrap interval.

    `a[i]` and `b[i]` are two scores of the same task i (two models, two rounds); the tasks are resampled
    together, so the interval reflects only how the difference varies over tasks: `bootstrap_mean(a - b)`.
    An interval that excludes 0 says the difference is unlikely to be an accident of which tasks were drawn.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need one value per task in both lists, got {x.shape} and {y.shape}")
    return bootstrap_mean(x - y, resamples, seed)
