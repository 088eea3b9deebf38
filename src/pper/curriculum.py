"""CCCS: StepCoder's curriculum of code completion subtasks (arXiv 2402.01391).

A task with a reference solution is first posed as a short completion: the model is given most of the reference
and writes only its end. Cut points split the reference's code into units (`unit`: "statements", where any
statement begins, nested ones included, as the paper splits at conditional statements; or "lines", every
non-blank line); with n units and S stages (`stages`), stage s (1 <= s <= S) removes the last
k(s) = ceil(n * s / S) units, and the model is given the rest as its program's prefix:

    prefix(s) = code[: cut[n - k(s)]]  (its trailing whitespace dropped),  prefix(S) = ""  (the whole task).

The code is the reference past the task's own prompt for completion tasks (HumanEval: the function body), the
whole reference for instruction tasks (MBPP). A prefix ends at the end of a line, so the model starts by
writing the newline and indentation of its first line, as it does after a code prompt.

Every task starts at stage 1 (only the end to write), or at stage S when it has no reference (or its reference
does not continue its prompt). After a round, a task advances one stage when the share of its programs sampled
at its current stage in that round that pass every test is at least `advance_at`; it never goes back. Stages
are kept per task and round in the buffer (`ReplayBuffer.set_stages`), so a killed run resumes on the same
stage. Validation and held-out tasks are never in the curriculum.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .buffer import ReplayBuffer
from .source import line_starts, source_lines
from .tasks import Task


class CurriculumConfig(BaseModel):
    """enabled: pose training tasks as completions of their reference (default off). stages: S, the number
    of stages (S = 1: every task is the whole task). unit: where the reference is cut, "statements" or
    "lines". advance_at: the share of a task's programs at its stage in a round that must pass every test for
    the task to move to the next stage. prefill_stops: an instruction task's prefilled answer stops at the closing
    fence, a top-level print(/assert/if __name__, or a redefinition of a function its prefix defines
    (`generation.prompts.stops_for_prefix`); false: only at end of text or the token cap, as before they existed."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    stages: int = Field(4, ge=1)
    unit: Literal["statements", "lines"] = "statements"
    advance_at: float = Field(0.5, gt=0.0, le=1.0)
    prefill_stops: bool = True


def reference_code(task: Task) -> str | None:
    """The code a curriculum cuts: the reference past the task's prompt (completion tasks; None when the
    reference does not continue the prompt), or the whole reference without the blank lines it may start with, as
    a program is extracted from an answer (instruction tasks); None without one."""
    if not task.solutions:
        return None
    reference = task.solutions[0]
    if task.prompt_style != "completion":
        return re.sub(r"\A(?:[ \t]*(?:\r\n|\r|\n))+", "", reference)
    head = task.prompt.rstrip()
    return reference[len(head) :] if reference.startswith(head) else None


def cut_points(code: str, unit: str, skip: str = "") -> list[int]:
    """Offsets in `code` where a unit begins (the start of its line), ascending. `skip`: text before `code` in
    the program it belongs to (a completion task's prompt), so that statements are found in the whole
    program; units that start in `skip` are not cut points."""
    whole = skip + code
    texts, starts = source_lines(whole), line_starts(whole)
    if unit == "lines":
        lines = {n for n, text in enumerate(texts) if text.strip()}
    else:
        try:
            tree = ast.parse(whole)
        except (SyntaxError, ValueError):
            return []
        lines = {node.lineno - 1 for node in ast.walk(tree) if isinstance(node, ast.stmt)}
    offsets = sorted(starts[n] - len(skip) for n in lines if n < len(starts))
    return [o for o in offsets if o >= 0 and code[o:].strip()]


def stage_prefix(task: Task, stage: int, config: CurriculumConfig) -> str:
    """The prefix the model is given for `task` at `stage` (1..stages); "" for the whole task."""
    code = reference_code(task)
    if code is None or stage >= config.stages:
        return ""
    skip = task.prompt.rstrip() if task.prompt_style == "completion" else ""
    cuts = cut_points(code, config.unit, skip)
    n = len(cuts)
    removed = math.ceil(n * stage / config.stages)
    if n == 0 or removed >= n:
        return ""
    return code[: cuts[n - removed]].rstrip()


def first_stage(task: Task, config: CurriculumConfig) -> int:
    """1 for a task the curriculum can cut; `stages` (the whole task) for one it cannot."""
    return 1 if stage_prefix(task, 1, config) else config.stages


def next_stage(stage: int, passed_all: Iterable[bool], config: CurriculumConfig) -> int:
    """The stage after a round at `stage` whose programs at that stage passed every test or not (`passed_all`):
    one up when their share that passed is at least `advance_at` (never past `stages`, never back)."""
    results = list(passed_all)
    if stage >= config.stages or not results:
        return stage
    return stage + 1 if sum(results) / len(results) >= config.advance_at else stage


def stages_for_round(buffer: ReplayBuffer, tasks: list[Task], round: int, config: CurriculumConfig) -> dict[str, int]:
    """Each training task's stage in `round` (1-based), decided once and kept in the buffer: a killed run
    resumes on the stages it had. Round 1 starts every task at `first_stage`; a later round advances each task
    by the programs the round before sampled at its stage then, each counted as often as it was sampled, a
    program first stored in an earlier round included (`ReplayBuffer.round_samples`; see `next_stage`)."""
    stored = buffer.stages(round)
    todo = [t for t in tasks if t.id not in stored]
    if not todo:
        return {t.id: stored[t.id] for t in tasks}
    if round <= 1:
        decided = {t.id: first_stage(t, config) for t in todo}
    else:
        before = stages_for_round(buffer, todo, round - 1, config)
        decided = {}
        for t in todo:
            prefix = stage_prefix(t, before[t.id], config)
            sampled = buffer.round_samples(t.id, round - 1) or [  # a buffer from before pper recorded them
                (p, 1) for p in buffer.programs(t.id) if p.round == round - 1
            ]
            results = [
                p.result.all_passed for p, n in sampled if p.prefix == prefix and p.result is not None for _ in range(n)
            ]
            decided[t.id] = next_stage(before[t.id], results, config)
    buffer.set_stages(round, decided)
    return {t.id: {**stored, **decided}[t.id] for t in tasks}


def prefixes_for_round(buffer: ReplayBuffer, tasks: list[Task], round: int, config: CurriculumConfig) -> dict[str, str]:
    """Task id -> the prefix its programs are sampled with in `round` (only tasks not at the whole task)."""
    stages = stages_for_round(buffer, tasks, round, config)
    prefixes = {t.id: stage_prefix(t, stages[t.id], config) for t in tasks}
    return {task_id: prefix for task_id, prefix in prefixes.items() if prefix}
