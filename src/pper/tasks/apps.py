"""APPS (Hendrycks et al. 2021) in the Hugging Face `codeparrot/apps` row format.

Rows have `problem_id`, `question`, `solutions` and `input_output` (both JSON text), `difficulty`
(introductory / interview / competition), `url` and `starter_code`. `input_output` holds `inputs` and
`outputs`; with a `fn_name` the problem is call-based, otherwise standard input/output. Rows without any
test are skipped (the loader warns with their ids).

APPS has no separate public tests: for standard-input problems, the public tests are the cases the statement shows
as examples (the input's lines as whole consecutive lines of the statement, the output's lines after them);
call-based problems get none (their examples are written as prose, `nums = [2,7,11,15], target = 9`, which does not
map onto the arguments reliably).
"""

from __future__ import annotations

import re
from typing import Any

from .model import CallCase, CallTests, StdioCase, StdioTests, Task
from .rows import RowError, json_field, need, optional


def parse_apps(row: dict[str, Any], split: str | None = None) -> Task | None:
    problem_id = need(row, "problem_id", int)
    question = need(row, "question", str)
    io = json_field(row, "input_output")
    if io is None:
        return None
    if not isinstance(io, dict):
        raise RowError("input_output", "must decode to an object with 'inputs' and 'outputs'")
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RowError("input_output", "must hold lists 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise RowError("input_output", f"has {len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        return None
    fn_name = io.get("fn_name")
    if fn_name is not None:
        if not isinstance(fn_name, str):
            raise RowError("input_output.fn_name", "must be a string")
        for i, args in enumerate(inputs):
            if not isinstance(args, list):
                raise RowError(f"input_output.inputs[{i}]", "must be a list of arguments for a call-based problem")
        tests: CallTests | StdioTests = CallTests(
            fn_name=fn_name,
            cases=tuple(CallCase(args=a, expected=o) for a, o in zip(inputs, outputs, strict=True)),
            unwrap_expected=True,
        )
    else:
        tests = StdioTests(
            cases=tuple(
                StdioCase(input=_text(i, f"input_output.inputs[{n}]"), output=_text(o, f"input_output.outputs[{n}]"))
                for n, (i, o) in enumerate(zip(inputs, outputs, strict=True))
            )
        )
    public = None
    if isinstance(tests, StdioTests):
        public = StdioTests(cases=tuple(c for c in tests.cases if _shown(c, question))) or None
    solutions = json_field(row, "solutions") or []
    if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
        raise RowError("solutions", "must decode to a list of strings")
    return Task(
        id=f"apps/{problem_id}",
        prompt=question,
        prompt_style="instruction",
        entry_point=fn_name,
        tests=tests,
        public_tests=public,
        solutions=tuple(solutions),
        difficulty=optional(row, "difficulty", str),
        split=split,
        source="apps",
        metadata={"url": optional(row, "url", str), "starter_code": optional(row, "starter_code", str) or ""},
    )


def _text(value: Any, field: str) -> str:
    """APPS stores stdin/stdout as a string, occasionally as a list of lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + "\n"
    raise RowError(field, f"must be a string or a list of strings, got {type(value).__name__}")


_OUTPUT_LABEL = re.compile(r"^[-=*\s]*(sample\s+)?outputs?(\s*#?\s*\d+)?\s*:?[-=*\s]*$", re.IGNORECASE)


def _shown(case: StdioCase, statement: str) -> bool:
    """Whether the statement shows this case as an example: the input's lines appear in it as consecutive whole
    lines, and the output's lines right after them, with only blank lines and an output label ("Output",
    "-----Output-----", "Sample Output 1:") in between (whitespace around each line aside). An input that only
    occurs elsewhere (inside another example's output, say) does not make a case shown."""
    lines = [line.strip() for line in statement.splitlines()]
    given = [line.strip() for line in case.input.strip().splitlines()]
    expected = [line.strip() for line in case.output.strip().splitlines()]
    if not given or not expected:
        return False
    start = _find(lines, given, 0)
    while start >= 0:
        after = start + len(given)
        while after < len(lines) and (not lines[after] or _OUTPUT_LABEL.match(lines[after])):
            after += 1
        if lines[after : after + len(expected)] == expected:
            return True
        start = _find(lines, given, start + 1)
    return False


def _find(lines: list[str], block: list[str], start: int) -> int:
    """Where `block` first appears in `lines` as consecutive lines at or after `start`; -1 if it does not."""
    for i in range(start, len(lines) - len(block) + 1):
        if lines[i : i + len(block)] == block:
            return i
    return -1
