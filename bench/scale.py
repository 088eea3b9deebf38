"""Scaling out the test phase: the Ray back-end on a Ray instance on this machine against the local pool, same
programs, same cores, same run; and the costs docs/scale.md's throughput model is built from.

Programs: HumanEval's 164 canonical solutions and 164 wrong completions (bench/humaneval_programs.py).
Rows (each tests every program once per round, rows alternate; calibration done once before, untimed):
* local pool, the baseline: `Executor` with one sandboxed worker per core, `map` over all programs.
* ray: `RayExecutor` on a Ray instance started here (`ray.init(num_cpus=cores)`), one pool of one worker per
  core on the one node, programs sent `batch` at a time; Ray's start-up and the pools' are timed apart.
Check (exit status 1 when it fails): the Ray back-end's verdicts and error texts equal the local pool's,
program by program. Then the per-program cost breakdown:
* a Ray request's round trip with no program (the driver -> pool -> driver overhead, per batch);
* the driver's CPU time per program in the Ray rows (sending, receiving, resolving futures: the one-driver
  ceiling of a cluster's test phase, with judging done on the nodes);
* the driver's SQLite commit rate: `ReplayBuffer.add_executions` of the results, in batches of the pipeline's
  `TEST_BATCH`, to a file buffer (the one-writer ceiling).
Ends with `programs/s ray vs local: N.NNx` (goal: the Ray back-end costs <= 1.3x the local pool's time).

    python bench/scale.py [--rounds 3] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from humaneval_programs import samples
from pper.buffer import NewProgram, ReplayBuffer
from pper.buffer.store import Execution
from pper.execution import Executor, ProgramResult, RayConfig
from pper.execution.ray_backend import RayExecutor
from pper.pipeline import TEST_BATCH
from pper.tasks import load_tasks


def timed(executor, jobs) -> tuple[float, float, list[ProgramResult]]:
    """(wall seconds, CPU seconds of this process, results) of testing `jobs`."""
    cpu, start = _cpu(), time.perf_counter()
    results = list(executor.map(jobs))
    return time.perf_counter() - start, _cpu() - cpu, results


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def commit_rate(tasks, jobs, results, path: Path) -> float:
    """Executions per second `add_executions` stores into a file buffer, TEST_BATCH per transaction."""
    with ReplayBuffer(path) as buffer:
        buffer.add_tasks(tasks)
        ids = buffer.add_programs([NewProgram(t.id, p, -1.0, 10, "bench") for t, p in jobs])
        pairs = [Execution(i, r) for i, r in zip(ids, results, strict=True)]
        start = time.perf_counter()
        for lo in range(0, len(pairs), TEST_BATCH):
            buffer.add_executions(pairs[lo : lo + TEST_BATCH])
        return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    tasks = load_tasks("humaneval")
    by_id = {t.id: t for t in tasks}
    jobs = [(by_id[r["task_id"]], by_id[r["task_id"]].prompt + r["completion"]) for r in samples(tasks)]
    print(f"{len(jobs)} programs; {cores} cores; Ray {ray.__version__}")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PPER_CACHE"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - start:.2f} s (once per run, untimed below)")
        start = time.perf_counter()
        remote = RayExecutor(ray_config=RayConfig(batch=args.batch))
        print(f"Ray sandbox pools: {len(remote.nodes)} started in {time.perf_counter() - start:.2f} s (untimed)")
        local = Executor(workers=cores)
        with local, remote:
            local.calibrate(tasks)
            remote.calibrate(tasks)  # the same cache file: read, not measured again
            times: dict[str, list[float]] = {"local pool": [], "ray": []}
            driver_cpu: list[float] = []
            for r in range(args.rounds):
                for name, executor in (("local pool", local), ("ray", remote)):
                    elapsed, cpu, results = timed(executor, jobs)
                    times[name].append(elapsed)
                    if name == "local pool":
                        reference = results
                    else:
                        driver_cpu.append(cpu)
                        diff = [
                            i
                            for i, (a, b) in enumerate(zip(results, reference, strict=True))
                            if (a.verdicts, a.error) != (b.verdicts, b.error)
                        ]
                        if diff:
                            print(f"CHECK FAILED: the Ray back-end's verdicts differ on programs {diff[:20]}")
                            failed = True
                    print(f"round {r + 1} {name:10s}: {len(jobs) / elapsed:7.1f} programs/s ({elapsed:.2f} s)")
            actor = remote._actors[0].handle
            ray.get(actor.run.remote({}, []))
            start = time.perf_counter()
            for _ in range(50):
                ray.get(actor.run.remote({}, []))
            rtt = (time.perf_counter() - start) / 50 * 1000
        rate = commit_rate(tasks, jobs, reference, Path(tmp) / "buffer.sqlite")
    ray.shutdown()
    print(f"check: verdicts and errors {'DIFFER' if failed else 'equal'} ({sum(r.all_passed for r in reference)} pass)")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"{name:10s}: {len(jobs) / t:7.1f} programs/s, {t / len(jobs) * 1000:.2f} ms per program (median)")
    print(f"Ray request round trip, no program: {rtt:.2f} ms (per batch of {args.batch})")
    per_program = statistics.median(driver_cpu) / len(jobs) * 1000
    print(f"driver CPU per program (Ray): {per_program:.3f} ms, a ceiling of {1000 / per_program:.0f} programs/s")
    print(f"Ray overhead per program: {(med['ray'] - med['local pool']) / len(jobs) * 1000:+.2f} ms")
    print(f"driver SQLite commits: {rate:.0f} executions/s (batches of {TEST_BATCH})")
    print(f"programs/s ray vs local: {med['local pool'] / med['ray']:.2f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
