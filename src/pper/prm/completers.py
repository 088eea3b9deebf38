"""Completers: what tries to finish the first j lines of a program into one that passes every test, the probe
c(j) of `pper.prm.search`.

`reference`: where the prefix's lines equal the first lines of one of the task's reference solutions, compared
line by line with whitespace normalised (indentation kept, tabs as 4 columns; other runs of spaces and tabs one
space; trailing ones dropped), the rest of that reference completes it; the completed program is run in pper's
sandbox. A prefix that matches no reference gets no completion from it (the model completer, which samples
completions of the prefix, is the other source).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..source import source_lines
from ..tasks import Task


def normalised(line: str) -> str:
    """The line with its indentation kept (tabs as 4 columns) and other runs of whitespace made one space."""
    indent = len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())
    return " " * indent + " ".join(line.split())


def shared_lines(program_lines: list[str], reference: str) -> int:
    """How many leading lines of the program equal the reference's (whitespace normalised)."""
    count = 0
    for ours, theirs in zip(program_lines, source_lines(reference), strict=False):
        if normalised(ours) != normalised(theirs):
            break
        count += 1
    return count


def reference_completion(task: Task, prefix: list[str]) -> str | None:
    """The program a reference makes of `prefix` (the first lines of a program): the prefix, then the rest of
    the first reference whose first lines equal it; None if no reference does."""
    for reference in task.solutions:
        lines = source_lines(reference)
        if len(lines) >= len(prefix) and shared_lines(prefix, reference) == len(prefix):
            return "\n".join(prefix + lines[len(prefix) :]) + "\n"
    return None


def reference_probe(task: Task, program: str, executor: Any) -> Callable[[int], bool]:
    """c(j) for `program` with the reference completer: its first j lines completed by a reference pass every
    test (run on `executor`, a pper executor)."""
    lines = source_lines(program)

    def completable(j: int) -> bool:
        completed = reference_completion(task, lines[:j])
        return completed is not None and executor.run(task, completed).all_passed

    return completable
