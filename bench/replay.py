"""Replay draws per second in pper's use: pper's prioritized sampler against a cumsum snapshot.

In pper the priorities change only after a test phase, between rounds; within a round the trainer draws
`training.steps` minibatches of `training.batch_size` programs (the default config's figures). So one round is:
build the sampling structure from the round's priorities, then draw steps x batch_size positions. The bench
times whole rounds, the build included, at 10^4, 10^5 and 10^6 programs, each round on new priorities.

Baseline ("cumsum snapshot"), what a user would write: w = p ** e; cdf = numpy.cumsum(w), rebuilt every round;
each batch is numpy.searchsorted(cdf, Generator.random(batch) * cdf[-1], side="right").
pper: `pper.buffer.PrioritizedSampler(p, e, seed, checked=True)` as `Replay` builds it every round (the
priorities come from `pper.buffer.priorities`, which makes them non-negative, so the sampler does not check them
again), then `.sample(batch)` per step. A third column shows the sampler checking the priorities itself
(`checked=False`, the default for other callers: one more pass over them).
Rounds of the two alternate, and a size's figure is draws per round / the median round time. Rounds are timed
in the CPU time of the bench's thread (numpy runs these operations on one thread, so on an idle machine it is the
wall time; on a shared machine, other processes' load does not count); --wall times them on the wall clock.

Checks (exit status 1 when one fails): the same positions as the baseline for the same seed; P(i) =
p_i^e / sum p_k^e; empirical draw frequencies match P(i) (chi-square, and the largest standardised deviation),
while the same counts are rejected against a wrong P(i); zero priorities are never drawn.

    python bench/replay.py
    python bench/replay.py --seconds 1 --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

from pper.buffer import PrioritizedSampler, ReplayTable, p2value, possibility, priorities
from pper.config import PperConfig

CHECK_DRAWS = 2_000_000
Z_LIMIT = 5.0  # chi-square z-score and per-position standardised deviation allowed


def synthetic_table(n: int, seed: int = 0) -> ReplayTable:
    rng = np.random.default_rng(seed)
    return ReplayTable(
        program_id=np.arange(1, n + 1),
        task_id=np.array([f"task/{i % 1000}" for i in range(n)], dtype=object),
        logprob=-rng.gamma(2.0, 10.0, size=n),
        num_tokens=rng.integers(10, 400, size=n),
        pass_rate=rng.choice([0.0, 0.2, 0.5, 0.8, 1.0], size=n, p=[0.5, 0.1, 0.1, 0.1, 0.2]),
    )


def round_priorities(n: int, scheme: str, alpha: float, mode: str, rounds: int) -> list[np.ndarray]:
    """The priorities of `rounds` successive rounds (new pass rates and P(t) each round, as after a test phase)."""
    out = []
    for r in range(rounds):
        t = synthetic_table(n, seed=r)
        out.append(priorities(p2value(possibility(t.logprob, t.num_tokens, mode), t.pass_rate, alpha), scheme))
    return out


# -- the baseline ------------------------------------------------------------------------------------------------


def snapshot(p: np.ndarray, exponent: float) -> np.ndarray:
    """The cumulative sums of p ** e (of p itself for e = 1, the default): the baseline's whole build."""
    return np.cumsum(p if exponent == 1.0 else p**exponent)


def snapshot_draw(cdf: np.ndarray, rng: np.random.Generator, batch: int) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(batch) * cdf[-1], side="right")


# -- timing ------------------------------------------------------------------------------------------------------


def time_rounds(prios: list[np.ndarray], exponent: float, steps: int, batch: int, seconds: float, clock) -> dict:
    """Median seconds per round (build + `steps` draws of `batch`) and per build of each contender, on `clock`.

    The contenders take turns on each round's priorities, the one going first rotating; rounds continue for
    `seconds` of wall time.
    """
    rng = np.random.default_rng(0)

    def baseline(p: np.ndarray) -> tuple[float, float]:
        t0 = clock()
        cdf = snapshot(p, exponent)
        t1 = clock()
        for _ in range(steps):
            snapshot_draw(cdf, rng, batch)
        return t1 - t0, clock() - t0

    def pper(checked: bool):
        def run(p: np.ndarray) -> tuple[float, float]:
            t0 = clock()
            sampler = PrioritizedSampler(p, exponent, seed=0, checked=checked)
            t1 = clock()
            for _ in range(steps):
                sampler.sample(batch)
            return t1 - t0, clock() - t0

        return run

    contenders = [("baseline", baseline), ("pper", pper(True)), ("pper checking", pper(False))]
    build: dict[str, list[float]] = {name: [] for name, _ in contenders}
    rounds: dict[str, list[float]] = {name: [] for name, _ in contenders}
    start, i = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or i < 6:
        p = prios[i % len(prios)]
        k = i % len(contenders)
        for name, fn in contenders[k:] + contenders[:k]:
            b, t = fn(p)
            build[name].append(b)
            rounds[name].append(t)
        i += 1
    median = statistics.median
    return {name: {"round": median(rounds[name]), "build": median(build[name]), "rounds": i} for name in rounds}


# -- checks ------------------------------------------------------------------------------------------------------


def chi_square_z(counts: np.ndarray, probability: np.ndarray) -> float:
    """(X^2 - df) / sqrt(2 df) of Pearson's statistic, positions with an expected count under 5 pooled into one
    bin: about N(0, 1) when the draws follow `probability`, large when they do not."""
    draws = counts.sum()
    expected = probability * draws
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = obs.size - 1
    return (stat - df) / math.sqrt(2 * df)


def check(name: str, ok: bool, detail: str, failures: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")
    if not ok:
        failures.append(name)


def run_checks(prios: np.ndarray, exponent: float, batch: int) -> list[str]:
    failures: list[str] = []
    n = prios.size
    print(f"checks ({n:,} programs, exponent {exponent}):")
    sampler = PrioritizedSampler(prios, exponent, seed=123)
    cdf, rng = snapshot(prios, exponent), np.random.default_rng(123)
    same = all(np.array_equal(sampler.sample(batch), snapshot_draw(cdf, rng, batch)) for _ in range(2000))
    check("same positions as the baseline for the same seed", same, f"2000 batches of {batch}", failures)

    w = prios**exponent
    exact = w / w.sum()
    err = float(np.max(np.abs(sampler.probabilities() - exact) / exact))
    check("P(i) = p_i^e / sum p_k^e", err < 1e-9, f"largest relative error {err:.1e}", failures)

    counts = np.bincount(PrioritizedSampler(prios, exponent, seed=7).sample(CHECK_DRAWS), minlength=n)
    z = chi_square_z(counts, exact)
    dev = float(np.max(np.abs(counts - exact * CHECK_DRAWS) / np.sqrt(exact * CHECK_DRAWS * (1 - exact))))
    detail = f"{CHECK_DRAWS:,} draws: chi-square z {z:.2f}, largest standardised deviation {dev:.2f}"
    check("draw frequencies follow P(i)", z < Z_LIMIT and dev < 6.0, detail, failures)
    wrong = prios ** (exponent * 1.1)
    z_wrong = chi_square_z(counts, wrong / wrong.sum())
    check("the frequency check rejects a wrong P(i) (exponent x 1.1)", z_wrong > Z_LIMIT, f"z {z_wrong:.1f}", failures)

    zeros = prios * (np.arange(n) % 3 != 0)
    drawn = PrioritizedSampler(zeros, exponent, seed=1).sample(CHECK_DRAWS // 10)
    never = not np.any(zeros[drawn] == 0)
    check("zero priorities are never drawn", never, f"{CHECK_DRAWS // 10:,} draws, every third priority 0", failures)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per size (rounds alternate)")
    parser.add_argument("--wall", action="store_true", help="time rounds on the wall clock instead of CPU time")
    args = parser.parse_args()

    clock = time.perf_counter if args.wall else time.thread_time
    config = PperConfig()
    t, r = config.training, config.replay
    steps, batch = t.steps, t.batch_size
    print(
        f"pper's use: one round = build from new priorities + {steps} steps x {batch} draws "
        f"(training.steps x training.batch_size of the default config); priority={r.priority}, alpha={r.alpha}, "
        f"exponent={r.exponent}; rounds timed on {'the wall clock' if args.wall else 'CPU time of this thread'}"
    )
    failures = run_checks(round_priorities(10_000, r.priority, r.alpha, r.possibility, 1)[0], r.exponent, batch)
    failures += run_checks(round_priorities(1_000, "proportional", 0.3, r.possibility, 1)[0], 0.7, batch)

    print(
        f"\n{'programs':>10} {'snapshot':>20} {'pper':>20} {'ratio':>6}   {'pper checking the priorities':>30}"
        f"\n{'':>10} {'build, draws/s':>20} {'build, draws/s':>20} {'':>6}   {'again (not in use), ratio':>30}"
    )
    ratio = None
    for n in args.sizes:
        prios = round_priorities(n, r.priority, r.alpha, r.possibility, 3)
        m = time_rounds(prios, r.exponent, steps, batch, args.seconds, clock)
        rate = {name: steps * batch / v["round"] for name, v in m.items()}
        cell = {name: f"{m[name]['build'] * 1e3:.2f} ms, {rate[name]:,.0f}" for name in m}
        ratio = rate["pper"] / rate["baseline"]
        again = f"{cell['pper checking']}, {rate['pper checking'] / rate['baseline']:.2f}x"
        print(
            f"{n:>10,} {cell['baseline']:>20} {cell['pper']:>20} {ratio:>5.2f}x   {again:>30}"
            f"  ({m['pper']['rounds']} rounds each)"
        )
    if failures:
        print(f"\nFAILED: {', '.join(failures)}")
        return 1
    print(f"draws/s vs cumsum snapshot: {ratio:.2f}x (pper uses the cumsum snapshot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
