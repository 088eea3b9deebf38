"""P2Value and the two priority schemes of PPER (arXiv 2410.12236, eq. 5 and sec. 3.3).

    P2Value_i = alpha * P(t_i) + (1 - alpha) * pass_rate_i

With a process reward model (`replay.prm_weight` w, issue 18), a failing program whose first lines are right
earns priority: pass_rate_i is replaced by (1 - w) * pass_rate_i + w * S_i, S_i the mean of the PRM's scores of
the program's lines (`pper.prm`).

P(t_i) is the possibility of the program under the model that wrote it: by default the geometric-mean
token probability exp(logP / tokens) (length-independent; the raw product vanishes for long programs),
or the raw sequence probability exp(logP) with `possibility="product"`.

PER's importance-sampling weights (Schaul et al. 2016, sec. 3.4) correct the bias of prioritized draws:

    w_i = (N * P(i))^-beta / max_j w_j

where P(i) is the probability of drawing program i (not the possibility P(t_i) above) and N the number of
programs in the replay. beta = 0 (the paper's setting) gives w_i = 1.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Possibility = Literal["geometric", "product"]
Scheme = Literal["rank", "proportional", "uniform"]
POSSIBILITIES = ("geometric", "product")
SCHEMES = ("rank", "proportional", "uniform")


def possibility(logprob: np.ndarray, num_tokens: np.ndarray, mode: Possibility = "geometric") -> np.ndarray:
    """P(t): exp(logP / tokens) for "geometric", exp(logP) for "product"."""
    logprob = np.asarray(logprob, dtype=np.float64)
    if mode == "geometric":
        return np.exp(logprob / np.maximum(np.asarray(num_tokens, dtype=np.float64), 1.0))
    if mode == "product":
        return np.exp(logprob)
    raise ValueError(f"possibility must be one of {POSSIBILITIES}, got {mode!r}")


def p2value(
    possibility: np.ndarray,
    pass_rate: np.ndarray,
    alpha: float,
    prm_score: np.ndarray | None = None,
    prm_weight: float = 0.0,
) -> np.ndarray:
    """alpha * P + (1 - alpha) * pass_rate, elementwise; with a PRM term (`prm_weight` w > 0, `prm_score` S the
    program's mean PRM line score), alpha * P + (1 - alpha) * ((1 - w) * pass_rate + w * S), where a program
    without a score (NaN) keeps its pass rate in S's place."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= prm_weight <= 1.0:
        raise ValueError(f"prm_weight must be in [0, 1], got {prm_weight}")
    rate = np.asarray(pass_rate, dtype=np.float64)
    if prm_weight > 0.0 and prm_score is not None:
        score = np.asarray(prm_score, dtype=np.float64)
        rate = (1.0 - prm_weight) * rate + prm_weight * np.where(np.isnan(score), rate, score)
    return alpha * np.asarray(possibility, dtype=np.float64) + (1.0 - alpha) * rate


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, highest value first; ties share the best rank of their group (1, 2, 2, 4)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.sort(-values)  # ascending negatives: the highest value first
    return np.searchsorted(order, -values, side="left") + 1


def priorities(values: np.ndarray, scheme: Scheme) -> np.ndarray:
    """p_i from P2Values: the value itself ("proportional"), 1 / rank ("rank"), or 1 ("uniform")."""
    values = np.asarray(values, dtype=np.float64)
    if scheme == "proportional":
        if values.size and values.min() < 0:
            raise ValueError("proportional priorities must be non-negative")
        return values.copy()
    if scheme == "rank":
        return 1.0 / ranks(values)
    if scheme == "uniform":
        return np.ones_like(values)
    raise ValueError(f"priority must be one of {SCHEMES}, got {scheme!r}")


def importance_weights(probability: np.ndarray, beta: float) -> np.ndarray:
    """w_i = (N * P(i))^-beta / max_j w_j over the draw probabilities P(i) of the N programs in the replay.

    N cancels in the normalisation, so w_i = (min_j P(j) / P(i))^beta, the minimum over P(j) > 0: the least
    likely program gets weight 1, every other less. beta = 0 gives 1 everywhere. A program with P(i) = 0 is
    never drawn; its weight is 0 (when beta > 0).
    """
    if not beta >= 0.0:
        raise ValueError(f"importance_beta must be >= 0, got {beta}")
    p = np.asarray(probability, dtype=np.float64)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0):
        raise ValueError("draw probabilities must be finite and non-negative")
    if beta == 0.0 or not p.size:
        return np.ones_like(p)
    positive = p > 0
    if not positive.any():
        raise ValueError("every draw probability is zero")
    smallest = p[positive].min()
    return np.where(positive, (smallest / np.where(positive, p, 1.0)) ** beta, 0.0)
