"""Replay draws per second: pper's prioritized sampler against a naive numpy baseline.

Baseline (named "naive"): per batch, renormalise the priorities (p^e / sum p^e) and call
numpy.random.Generator.choice(n, size=batch, p=...), which rebuilds the cumulative sum every call.
pper: the priorities are put in a sum tree once, and each batch is a vectorised O(batch * log n) search.

    python bench/replay.py                 # 10^6 programs, batches of 256
    python bench/replay.py --programs 100000 --seconds 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pper.buffer import Replay, ReplayConfig, ReplayTable


def synthetic_table(n: int, seed: int = 0) -> ReplayTable:
    rng = np.random.default_rng(seed)
    return ReplayTable(
        program_id=np.arange(1, n + 1),
        task_id=np.array([f"task/{i % 1000}" for i in range(n)], dtype=object),
        logprob=-rng.gamma(2.0, 10.0, size=n),
        num_tokens=rng.integers(10, 400, size=n),
        pass_rate=rng.choice([0.0, 0.2, 0.5, 0.8, 1.0], size=n, p=[0.5, 0.1, 0.1, 0.1, 0.2]),
    )


def rate(fn, batch: int, seconds: float) -> float:
    """Draws per second of `fn` (one call = one batch), timed for about `seconds`."""
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        fn()
        calls += 1
    return calls * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()

    table = synthetic_table(args.programs)
    print(f"buffer: {args.programs:,} tested programs, batches of {args.batch}")
    for scheme in ("proportional", "rank"):
        measure(table, scheme, args.batch, args.seconds)


def measure(table: ReplayTable, scheme: str, batch: int, seconds: float) -> None:
    config = ReplayConfig(priority=scheme, alpha=0.5, exponent=0.7)
    t0 = time.perf_counter()
    replay = Replay(table, config, seed=0)
    build = time.perf_counter() - t0

    weights = replay.sampler.probabilities() * replay.sampler.total  # p_i^e, as the tree holds them
    priorities = weights ** (1 / config.exponent)
    rng = np.random.default_rng(0)

    def naive() -> np.ndarray:
        w = priorities**config.exponent
        return rng.choice(priorities.size, size=batch, p=w / w.sum())

    naive_rate = rate(naive, batch, seconds)
    tree_rate = rate(lambda: replay.sampler.sample(batch), batch, seconds)
    draws_rate = rate(lambda: replay.sample(batch), batch, seconds)
    print(f"\n[{scheme}] build (P2Value, priorities, sum tree): {build:.2f} s")
    print(f"  naive renormalise + Generator.choice(p=...): {naive_rate:12,.0f} draws/s")
    print(f"  pper sum tree (positions):                   {tree_rate:12,.0f} draws/s")
    print(f"  pper Replay.sample (Draw objects):           {draws_rate:12,.0f} draws/s")
    print(f"  ratio pper sum tree / naive: {tree_rate / naive_rate:.1f}x")
    print(f"  ratio pper Replay.sample / naive: {draws_rate / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
