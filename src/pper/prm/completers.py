"""Completers: what tries to finish the first j lines of a program into one that passes every test, the probe
c(j) of `pper.prm.search`.

`reference`: where the prefix's lines equal the first lines of one of the task's reference solutions, compared
line by line (`normalised`: trailing whitespace dropped, indentation exact, other runs of whitespace one space
outside any line holding a quote, whose spaces may be inside a string), the rest of that reference completes it;
the completed program is run in pper's sandbox. A prefix that matches no reference gets no completion from it
(the model completer, which samples completions of the prefix, is the other source).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..source import source_lines
from ..tasks import Task


def normalised(line: str) -> str:
    """The line as lines are compared: trailing whitespace dropped; its indentation exactly as written (a tab is not
    four spaces: a program mixing them may not even compile); other runs of whitespace made one space, unless the
    line holds a quote (the spaces may be inside a string, where they are part of its value)."""
    body = line.rstrip()
    if "'" in body or '"' in body:
        return body
    indent = body[: len(body) - len(body.lstrip())]
    return indent + " ".join(body.split())


def shared_lines(ours: list[str], theirs: list[str]) -> int:
    """How many leading lines of `ours` equal those of `theirs` (`normalised`)."""
    count = 0
    for a, b in zip(ours, theirs, strict=False):
        if normalised(a) != normalised(b):
            break
        count += 1
    return count


def keeps_prefix(program: str, prefix: list[str]) -> bool:
    """Whether `program` starts with the lines `prefix` (a completion that rewrites one of them, or stops before
    its last one, does not complete it); a prefix ending in blank lines counts them."""
    return shared_lines(source_lines(program), prefix) >= len(prefix)


def reference_completions(task: Task, prefix: list[str]) -> Iterator[str]:
    """The programs the references make of `prefix` (the first lines of a program): the prefix, then the rest of
    each reference whose first lines equal it, in the task's order (distinct ones only)."""
    seen: set[str] = set()
    for reference in task.solutions:
        lines = source_lines(reference)
        if len(lines) >= len(prefix) and shared_lines(prefix, lines) == len(prefix):
            completed = "\n".join(prefix + lines[len(prefix) :]) + "\n"
            if completed not in seen:
                seen.add(completed)
                yield completed


def reference_completes(task: Task, prefix: list[str], executor: Any) -> bool:
    """c(j) by the references: one of the programs they make of `prefix` passes every test (run on `executor`)."""
    return any(executor.run(task, program).all_passed for program in reference_completions(task, prefix))


def reference_probe(task: Task, program: str, executor: Any) -> Callable[[int], bool]:
    """c(j) for `program` with the reference completer: its first j lines completed by a reference pass every
    test (run on `executor`, a pper executor)."""
    lines = source_lines(program)

    def completable(j: int) -> bool:
        return reference_completes(task, lines[:j], executor)

    return completable
