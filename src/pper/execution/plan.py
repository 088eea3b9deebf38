"""How a task's tests are run: what the sandbox is given, and what stays outside it.

The sandbox gets the inputs: call expressions, arguments, stdin. Expected values and comparisons stay in
the calling process wherever the test allows it, so a program cannot read them or fake their outcome:

* `assert` tests of the form `assert <expression over calls of the function under test>`, where the
  expression outside the calls uses only literals, operators and a few pure builtins (`abs`, `len`,
  `sorted`, `set`, `math.isclose`, ...), are split: the sandbox evaluates the calls
  (`candidate([1, 2])`), returns their values as plain data, and the check (`_v0 == 3`) is evaluated
  outside. Other asserts (loops, helper functions, several statements) run whole inside the sandbox.
* `call` tests: the sandbox calls the function with the arguments; the result is compared outside.
* `stdio` tests: the sandbox runs the program on the input; its output is compared outside.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..tasks import AssertTests, CallTests, StdioTests, Task

SAFE_FUNCTIONS = {
    "abs",
    "all",
    "any",
    "bool",
    "dict",
    "float",
    "frozenset",
    "int",
    "isinstance",
    "len",
    "list",
    "max",
    "min",
    "round",
    "set",
    "sorted",
    "str",
    "sum",
    "tuple",
    "type",
}
SAFE_NAMES = SAFE_FUNCTIONS | {"True", "False", "None", "math"}
_SAFE_NODES = (
    ast.Expression,
    ast.Compare,
    ast.BoolOp,
    ast.UnaryOp,
    ast.BinOp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
    ast.Call,
    ast.Attribute,
    ast.keyword,
    ast.Subscript,
    ast.Slice,
    ast.IfExp,
    ast.cmpop,
    ast.boolop,
    ast.unaryop,
    ast.operator,
)


@dataclass(frozen=True)
class OutsideCheck:
    """An assert split into calls (evaluated in the sandbox after `prelude`) and a check (evaluated here)."""

    prelude: str
    calls: tuple[str, ...]
    check: str
    source: str
    code: Any = field(compare=False, repr=False, default=None)


@dataclass(frozen=True)
class Plan:
    """A task's tests as the sandbox runs them (`public`) and as their results are judged (`checks`)."""

    kind: str
    public: dict[str, Any]
    checks: tuple[Any, ...]
    key: str

    @property
    def num_tests(self) -> int:
        return len(self.checks)


def build_plan(task: Task) -> Plan:
    tests = task.tests
    if isinstance(tests, AssertTests):
        targets = {name for name in (task.entry_point, "candidate") if name}
        checks, public_tests = [], []
        for source in tests.asserts:
            split = split_assert(source, targets)
            checks.append(split)
            public_tests.append({"prelude": split.prelude, "calls": list(split.calls)} if split else {"code": source})
        public = {"kind": "assert", "setup": tests.setup, "entry": task.entry_point, "tests": public_tests}
    elif isinstance(tests, CallTests):
        checks = [(case.expected, tests.unwrap_expected) for case in tests.cases]
        public = {"kind": "call", "fn": tests.fn_name, "args": [case.args for case in tests.cases]}
    elif isinstance(tests, StdioTests):
        checks = [case.output for case in tests.cases]
        public = {"kind": "stdio", "inputs": [case.input for case in tests.cases]}
    else:  # pragma: no cover - the three kinds are exhaustive
        raise TypeError(f"unknown test suite {type(tests).__name__}")
    key = hashlib.sha256(json.dumps(public, sort_keys=True, default=repr).encode()).hexdigest()[:32]
    return Plan(kind=public["kind"], public=public, checks=tuple(checks), key=key)


def split_assert(source: str, targets: set[str]) -> OutsideCheck | None:
    """Split `assert f(x) == y`-style tests; None when the assert must run whole in the sandbox.

    Statements before the assert (imports, assignments: HumanEval's context lines) become the prelude,
    run in the sandbox before the calls, provided they assert nothing themselves.
    """
    try:
        module = ast.parse(source)
    except SyntaxError:
        return None
    *prelude, last = module.body or [None]
    if not isinstance(last, ast.Assert) or any(isinstance(n, ast.Assert) for s in prelude for n in ast.walk(s)):
        return None
    calls = _outermost_calls(last.test, targets)
    if not calls:
        return None
    text = source.encode()
    offsets = _line_offsets(text)

    def span(node: ast.AST) -> tuple[int, int]:
        return offsets[node.lineno - 1] + node.col_offset, offsets[node.end_lineno - 1] + node.end_col_offset

    begin, end = span(last.test)
    check, cursor, call_texts = [b"("], begin, []
    for i, call in enumerate(calls):
        a, b = span(call)
        check += [text[cursor:a], f"_v{i}".encode()]
        call_texts.append(text[a:b].decode())
        cursor = b
    check += [text[cursor:end], b")"]
    check_source = b"".join(check).decode()
    if not all(_safe(node) for node in _outside_nodes(last.test, calls)):
        return None
    prelude_text = text[: span(prelude[-1])[1]].decode() if prelude else ""
    return OutsideCheck(
        prelude=prelude_text,
        calls=tuple(call_texts),
        check=check_source,
        source=source,
        code=compile(check_source, "<check>", "eval", dont_inherit=True),
    )


def _outermost_calls(node: ast.AST, targets: set[str]) -> list[ast.Call]:
    """Calls of the function under test that are not inside another such call, in source order."""
    found, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in targets:
            found.append(n)
        else:
            stack.extend(ast.iter_child_nodes(n))
    return sorted(found, key=lambda c: (c.lineno, c.col_offset))


def _outside_nodes(node: ast.AST, calls: list[ast.Call]) -> list[ast.AST]:
    """The nodes of an assert's test outside the calls of the function under test."""
    skip = {id(c) for c in calls}
    nodes, stack = [], [node]
    while stack:
        n = stack.pop()
        if id(n) not in skip:
            nodes.append(n)
            stack.extend(ast.iter_child_nodes(n))
    return nodes


def _line_offsets(text: bytes) -> list[int]:
    offsets, position = [0], 0
    for line in text.split(b"\n")[:-1]:
        position += len(line) + 1
        offsets.append(position)
    return offsets


def _safe(node: ast.AST) -> bool:
    """Whether a node may be evaluated outside the sandbox on plain values."""
    if not isinstance(node, _SAFE_NODES):
        return False
    if isinstance(node, ast.Name):
        return node.id in SAFE_NAMES
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "math" and hasattr(math, node.attr)
    if isinstance(node, ast.Call):
        f = node.func
        return (isinstance(f, ast.Name) and f.id in SAFE_FUNCTIONS) or isinstance(f, ast.Attribute)
    return True
