"""Code-generation metrics over tested samples: APPS pass rate and strict accuracy, unbiased pass@k.

pass rate: the mean over tasks of the fraction of tests a sample passes ("test case average");
strict accuracy: the mean over tasks of the fraction of samples passing every test; pass@k: the
HumanEval paper's unbiased estimator 1 - C(n-c, k) / C(n, k), averaged over tasks. With one sample per
task, pass@1 equals strict accuracy. Tasks with several samples weigh once each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scored:
    """One tested sample: its task, the fraction of tests it passed and whether it passed them all."""

    task_id: str
    pass_rate: float
    passed: bool


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n, c of them correct, is correct.

    1 - C(n - c, k) / C(n, k); defined for 1 <= k <= n and 0 <= c <= n (k samples cannot be drawn from fewer).
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples per task, got n={n}, k={k}: sample at least k per task")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n correct samples, got n={n}, c={c}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def summarize(scored: Iterable[Scored], ks: Sequence[int] = (1,)) -> dict[str, float | int]:
    """tasks, samples, pass_rate, strict_accuracy and pass@k for each k no larger than every task's n."""
    by_task: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        by_task[s.task_id].append(s)
    if not by_task:
        return {"tasks": 0, "samples": 0}
    groups = list(by_task.values())
    summary: dict[str, float | int] = {
        "tasks": len(groups),
        "samples": sum(len(g) for g in groups),
        "pass_rate": float(np.mean([np.mean([s.pass_rate for s in g]) for g in groups])),
        "strict_accuracy": float(np.mean([np.mean([s.passed for s in g]) for g in groups])),
    }
    smallest = min(len(g) for g in groups)
    for k in ks:
        if k <= smallest:
            summary[f"pass@{k}"] = float(np.mean([pass_at_k(len(g), sum(s.passed for s in g), k) for g in groups]))
    return summary


def grouped(scored: Sequence[Scored], key: dict[str, str | None], ks: Sequence[int] = (1,)) -> dict[str, dict]:
    """`summarize` per value of `key` (task id -> split or difficulty); tasks without one are left out."""
    groups: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        value = key.get(s.task_id)
        if value is not None:
            groups[value].append(s)
    return {value: summarize(items, ks) for value, items in sorted(groups.items())}
