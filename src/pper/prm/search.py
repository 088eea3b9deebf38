"""Line labels by binary search over a program's prefixes (arXiv 2410.17621).

A program has m lines, numbered from 1. c(j) says whether its first j lines can still be completed into a
program that passes every test. Labelling assumes, as the paper does, that c is monotone: true up to some line
and false from the first bad line b on (b = m + 1 when c(m) holds). Then

    label(i) = 1 if i < b else 0,    b = min{ j in 1..m : not c(j) }  (m + 1 if there is none).

c(0), the empty prefix, is taken as true (the task is solvable), and so is c(j) for j <= `known`, the leading
lines known to be completable without a probe (they equal a passing reference's first lines). A program that
passes every test has b = m + 1 and needs no probe. Otherwise the search probes c(m) first (a failing program
may still be completed by appending lines), then bisects the interval (lo, hi) with c(lo) true and c(hi) false:

    while hi - lo > 1:  mid = (lo + hi) // 2;  lo, hi = (mid, hi) if c(mid) else (lo, mid)
    b = hi

which takes at most 1 + ceil(log2(m - known)) probes.

The bisection alone can never see monotonicity fail: every probe it finds true lies below every probe it finds
false, whatever c is. A completion can: a completion of the prefix j' that passes and keeps the program's first
j >= j' lines (it wrote line j' + 1 onwards as the program did) shows c(j) true. When an earlier probe found c(j)
false, that is a contradiction, recorded as (j, j') (`contradictions`); the labels stay as the search left them.
With the reference completer this cannot happen (lines shared with the passing reference are `known`, never
probed), so contradictions come from sampled completions, where c is a random test that may miss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Search:
    """Where the search put the first bad line of an `m`-line program: `first_bad` = b (m + 1: every line is
    good), and the probes it ran, (prefix length j, c(j)), in order."""

    m: int
    first_bad: int
    probes: tuple[tuple[int, bool], ...] = ()

    @property
    def labels(self) -> list[int]:
        """label(i) for i = 1..m."""
        return [1 if i < self.first_bad else 0 for i in range(1, self.m + 1)]


def max_probes(m: int, known: int = 0) -> int:
    """The most probes `first_bad_line` runs on an m-line failing program: 1 + ceil(log2(m - known))."""
    span = m - min(known, m)
    return 0 if span == 0 else 1 + math.ceil(math.log2(span))


def first_bad_line(m: int, completable: Callable[[int], bool], known: int = 0, passes: bool = False) -> Search:
    """The first bad line of an m-line program (see the module's docstring). `completable(j)` probes c(j);
    `known`: leading lines known to be completable; `passes`: the program passes every test (no probe)."""
    if m < 0 or known < 0:
        raise ValueError(f"m and known must be >= 0, got {m} and {known}")
    known = min(known, m)
    if passes or known == m:
        return Search(m, m + 1)
    probes: list[tuple[int, bool]] = []

    def probe(j: int) -> bool:
        result = bool(completable(j))
        probes.append((j, result))
        return result

    if probe(m):
        return Search(m, m + 1, tuple(probes))
    lo, hi = known, m
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    return Search(m, hi, tuple(probes))


def contradictions(probes: tuple[tuple[int, bool], ...], witnesses: dict[int, int]) -> tuple[tuple[int, int], ...]:
    """(j, j') for each probe c(j) found false while the passing completion of the prefix j' kept the program's
    first `witnesses[j']` >= j lines (see the module's docstring); `witnesses`: probe j' -> program lines its
    passing completion kept."""
    return tuple((j, w) for j, ok in probes if not ok for w, kept in sorted(witnesses.items()) if kept >= j)
