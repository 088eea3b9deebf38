"""Reranking by the PRM: which of a task's candidate programs to keep (`generation.rerank: prm`) or to pick
(best-of-n evaluation, `pper eval --select`).

A candidate's PRM value is the mean of its line scores S_i (`PRM.scores`); its log-probability value is the mean
token log-probability of its program, logP / tokens (the geometric-mean possibility of P2Value, in log space):

    prm(c) = (1 / |L|) * sum_{i in L} S_i    (L: the scored lines; undefined when no line is scored)
    lp(c)  = logP(c) / num_tokens(c)          (undefined without a log-probability or tokens)

Candidates are ordered best first by prm(c), then by lp(c) among equal prm values, then by their order as sampled;
an undefined value ranks after every defined one. Reranking samples `generation.candidates` programs per task and
keeps the first k distinct programs of that order (a program sampled twice counts once, as the buffer stores it);
best-of-n picks the first (by the PRM), or the first by lp alone (by log-probability).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from ..tasks import Task

T = TypeVar("T")


def mean_score(scores: Mapping[int, float]) -> float | None:
    """prm(c): the mean of a program's line scores (1-based line -> score); None when no line is scored."""
    return sum(scores.values()) / len(scores) if scores else None


def mean_logprob(logprob: float | None, num_tokens: int | None) -> float | None:
    """lp(c): logP / tokens; None without a log-probability or with no token."""
    if logprob is None or not num_tokens or math.isnan(logprob):
        return None
    return logprob / num_tokens


def ranking(values: Sequence[float | None], logprobs: Sequence[float | None]) -> list[int]:
    """The candidates' indices best first: by `values` (higher first), then `logprobs` (higher first), then
    index; None ranks after every number, for either key."""
    if len(values) != len(logprobs):
        raise ValueError(f"one value and one log-probability per candidate, got {len(values)} and {len(logprobs)}")

    def key(i: int) -> tuple[bool, float, bool, float, int]:
        v, lp = values[i], logprobs[i]
        return (v is None, -(v or 0.0), lp is None, -(lp or 0.0), i)

    return sorted(range(len(values)), key=key)


def top_k(candidates: Sequence[T], scores: Sequence[Mapping[int, float]], k: int) -> list[T]:
    """The k best `candidates` (objects with `logprob` and `num_tokens`, such as `generation.Candidate`) by the
    module's order, best first; `scores[i]`: candidate i's line scores. Fewer than k candidates: all of them."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(candidates) != len(scores):
        raise ValueError(f"one set of line scores per candidate, got {len(candidates)} and {len(scores)}")
    order = ranking([mean_score(s) for s in scores], [mean_logprob(c.logprob, c.num_tokens) for c in candidates])
    return [candidates[i] for i in order[:k]]


class Rerank:
    """`generation.rerank: prm` as the `select` of `pipeline.sample_into_buffer`: a task's candidates -> the top
    `k` by `prm`'s scores (inputs cut to `max_length` tokens, `prm.max_length`); counts what it saw and kept."""

    def __init__(self, prm: Any, k: int, max_length: int = 2048):
        self.prm, self.k, self.max_length = prm, k, max_length
        self.tasks = self.sampled = self.kept = 0

    def scores(self, task: Task, program: str) -> dict[int, float]:
        from .model import line_input

        return self.prm.scores(line_input(task, program, self.prm.tokenizer, self.max_length))

    def __call__(self, task: Task, candidates: list[Any]) -> list[Any]:
        from ..buffer.store import program_hash

        first: dict[str, Any] = {}  # each program once: its first sample
        for c in candidates:
            first.setdefault(program_hash(c.program), c)
        distinct = list(first.values())
        kept = top_k(distinct, [self.scores(task, c.program) for c in distinct], self.k)
        self.tasks, self.sampled, self.kept = self.tasks + 1, self.sampled + len(candidates), self.kept + len(kept)
        return kept
