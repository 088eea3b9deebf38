"""MBPP (Austin et al. 2021): the original JSONL and the Hugging Face `mbpp` row formats.

Original / HF "full" rows: `task_id`, `text`, `code`, `test_list`, `test_setup_code`,
`challenge_test_list`. HF "sanitized" rows: `task_id`, `prompt`, `code`, `test_list`, `test_imports`.
Splits by task id as in the MBPP paper: 1-10 prompt, 11-510 test, 511-600 validation, 601-974 train.

Public tests: the `test_list` asserts, which the prompt shows the model (`generation.prompts.instruction`).
Private tests (the ones that judge): `test_list` plus `challenge_test_list` where the row has one (11 rows of the
original file, all in the test split).
"""

from __future__ import annotations

import ast
import builtins
from typing import Any

from .model import AssertTests, Task
from .rows import RowError, need, optional

SPLITS = (("prompt", 1, 10), ("test", 11, 510), ("validation", 511, 600), ("train", 601, 974))


def split_of(task_id: int) -> str | None:
    for name, lo, hi in SPLITS:
        if lo <= task_id <= hi:
            return name
    return None


def parse_mbpp(row: dict[str, Any]) -> Task:
    task_id = need(row, "task_id", int)
    if "text" in row:
        prompt = need(row, "text", str)
        setup = optional(row, "test_setup_code", str) or ""
    elif "prompt" in row:
        prompt = need(row, "prompt", str)
        setup = "\n".join(_strings(row, "test_imports"))
    else:
        raise RowError("text", "missing (MBPP rows carry the problem in 'text', or 'prompt' when sanitized)")
    tests = _strings(row, "test_list")
    if not tests:
        raise RowError("test_list", "is empty")
    code = need(row, "code", str).replace("\r\n", "\n")
    setup = setup.replace("\r\n", "\n")
    challenge = _strings(row, "challenge_test_list")
    return Task(
        id=f"mbpp/{task_id}",
        prompt=prompt.strip(),
        prompt_style="instruction",
        entry_point=_called_function(tests[0]),
        tests=AssertTests(asserts=tuple(tests + challenge), setup=setup),
        public_tests=AssertTests(asserts=tuple(tests), setup=setup),
        solutions=(code,),
        split=split_of(task_id),
        source="mbpp",
        metadata={"task_id": task_id, "challenge_test_list": challenge},
    )


def _strings(row: dict[str, Any], key: str) -> list[str]:
    values = optional(row, key, list) or []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RowError(f"{key}[{i}]", f"must be a string, got {type(v).__name__}")
    return values


def _called_function(test: str) -> str | None:
    """The function an assert such as `assert int(f(1)) == 2` tests: the first non-builtin one called."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        raise RowError("test_list[0]", "is not valid Python") from None
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    own = [name for name in called if not hasattr(builtins, name)]
    return (own or called or [None])[0]  # MBPP 126 names its function `sum`
