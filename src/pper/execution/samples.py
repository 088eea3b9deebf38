"""human-eval style sample files: read programs to test, write per-sample results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..files import atomic_file
from ..tasks import Task
from ..tasks.rows import iter_file_rows
from .config import ExecutionConfig
from .limits import Limits
from .pool import Isolation, open_executor
from .results import ProgramResult


@dataclass(frozen=True)
class Sample:
    """One line of a samples file, with its task and the full program to run."""

    row: dict[str, Any]
    task: Task
    program: str


def program_of(task: Task, completion: str) -> str:
    """The runnable program for a completion: the prompt plus the completion for code-completion tasks
    (as human-eval does), the completion itself for instruction tasks."""
    return task.prompt + completion if task.prompt_style == "completion" else completion


def completion_of(task: Task, program: str) -> str:
    """The human-eval `completion` for a program: what follows the task's prompt in it (code-completion
    tasks; a program not continuing the prompt follows it whole, redefining the function), else the
    program itself."""
    if task.prompt_style != "completion":
        return program
    return program[len(task.prompt) :] if program.startswith(task.prompt) else "\n" + program


def read_samples(path: str | Path, tasks: Iterable[Task]) -> list[Sample]:
    """Rows with `task_id` and `completion` (human-eval) or `program` (a whole program)."""
    by_id = {t.id: t for t in tasks}
    samples = []
    for where, row in iter_file_rows(path):
        task_id = row.get("task_id")
        if not isinstance(task_id, str):
            raise DataFormatError(str(path), where, "task_id", "missing or not a string")
        task = by_id.get(task_id)
        if task is None:
            raise DataFormatError(str(path), where, "task_id", f"unknown task {task_id!r} for the given --tasks")
        if isinstance(row.get("program"), str):
            program = row["program"]
        elif isinstance(row.get("completion"), str):
            program = program_of(task, row["completion"])
        else:
            raise DataFormatError(str(path), where, "completion", "each sample needs 'completion' or 'program'")
        samples.append(Sample(row, task, program))
    return samples


def result_row(sample: Sample, result: ProgramResult) -> dict[str, Any]:
    """The sample's own fields, human-eval's `result` and `passed`, and pper's per-test results."""
    return {
        **sample.row,
        "result": "passed" if result.all_passed else f"failed: {result.error or 'no tests'}",
        **result.to_dict(),
    }


def write_results(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def test_samples(
    path: str | Path,
    tasks: Iterable[Task],
    out: str | Path | None = None,
    limits: Limits | None = None,
    workers: int | None = None,
    isolation: Isolation = "auto",
    show_progress: bool = False,
    coverage: bool = False,
    execution: ExecutionConfig | None = None,
) -> dict[str, Any]:
    """What `pper test` does: run every sample of `path`, write `<path>_results.jsonl` (or `out`) and
    return a summary (samples, passed, strict accuracy, mean pass rate, seconds, programs per second). With
    `coverage`, each result also lists the program's `executed_lines`. `execution`: the back-end and its
    settings (`limits`, `workers` and `isolation` are then ignored)."""
    samples = read_samples(path, tasks)
    out = Path(out or f"{path}_results.jsonl")
    if execution is None:
        execution = ExecutionConfig(limits=limits or Limits(), workers=workers, isolation=isolation)
    start = time.perf_counter()
    with open_executor(execution, coverage) as executor:
        executor.calibrate({s.task.id: s.task for s in samples}.values())  # all at once, in parallel
        results = executor.map((s.task, s.program) for s in samples)
        if show_progress:
            from ..progress import progress

            results = progress(results, len(samples), "testing", "programs")
        results = list(results)
    elapsed = time.perf_counter() - start
    write_results(out, (result_row(s, r) for s, r in zip(samples, results, strict=True)))
    n = len(results)
    passed = sum(r.all_passed for r in results)
    return {
        "samples": n,
        "passed": passed,
        "strict_accuracy": passed / n if n else 0.0,
        "mean_pass_rate": sum(r.pass_rate for r in results) / n if n else 0.0,
        "seconds": round(elapsed, 3),
        "programs_per_second": round(n / elapsed, 1) if elapsed else None,
        "results": str(out),
    }
