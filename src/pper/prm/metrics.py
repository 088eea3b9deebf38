"""The PRM's quality: ROC AUC of line scores against line labels, and the baselines it is compared with.

ROC AUC is the probability that a good line (label 1) drawn at random scores higher than a bad line (label 0)
drawn at random, ties counting one half (the Mann-Whitney U statistic over n1 good and n0 bad lines):

    AUC = (R1 - n1 (n1 + 1) / 2) / (n1 n0),  R1 the sum of the good lines' ranks among all scores (ties averaged).

Baselines on the same lines: the policy's mean token log-probability of the line, and the line's relative
position, scored as 1 - (i - 1) / m (earlier lines are more often good).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC of `scores` for `labels` (1 good, 0 bad); None when one class is absent."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):  # average ranks over ties, 1-based
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r1 = ranks[y == 1].sum()
    return float((r1 - n1 * (n1 + 1) / 2) / (n1 * n0))


def position_scores(m: int) -> list[float]:
    """The relative-position baseline for an m-line program: 1 - (i - 1) / m for line i."""
    return [1 - (i - 1) / m for i in range(1, m + 1)]
