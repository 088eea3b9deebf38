"""The `Task` model shared by every task source, and its three kinds of tests.

A task is a prompt plus a test suite. Test suites come in three kinds:

* `AssertTests`: assert statements run after the program (HumanEval's `check`, MBPP's `test_list`).
* `CallTests`: call-based input/output pairs (APPS problems with a `fn_name`).
* `StdioTests`: stdin/stdout pairs (APPS standard-input problems, CodeContests).

A task's `tests` judge its programs (the **private** tests, which may include the public ones); its optional
`public_tests` are the tests the model may see, in the prompt or in feedback between repair turns (RLEF). Held-out
metrics are always computed on `tests`; the public tests only decide whether a program gets a repair turn and what
its feedback says.

`Task.to_dict` / `Task.from_dict` define pper's generic JSONL task format (docs/tasks.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from .rows import RowError, need, optional

PromptStyle = Literal["completion", "instruction"]
PROMPT_STYLES = ("completion", "instruction")


@dataclass(frozen=True)
class AssertTests:
    """Assert-statement tests.

    `setup` runs once after the program (imports, helpers, MBPP's `test_setup_code`); each entry of
    `asserts` is one test, a snippet that raises (usually `AssertionError`) when the program is wrong.
    """

    asserts: tuple[str, ...]
    setup: str = ""
    kind: ClassVar[str] = "assert"

    def __len__(self) -> int:
        return len(self.asserts)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "setup": self.setup, "asserts": list(self.asserts)}


@dataclass(frozen=True)
class CallCase:
    """One call: `fn_name(*args)` must return `expected`."""

    args: list[Any]
    expected: Any


@dataclass(frozen=True)
class CallTests:
    """Call-based input/output pairs.

    `unwrap_expected` is set for APPS, whose expected outputs are usually wrapped in a one-element
    list: a result then also counts as equal when it equals `expected[0]` (APPS's own rule).
    """

    fn_name: str
    cases: tuple[CallCase, ...]
    unwrap_expected: bool = False
    kind: ClassVar[str] = "call"

    def __len__(self) -> int:
        return len(self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fn_name": self.fn_name,
            "unwrap_expected": self.unwrap_expected,
            "cases": [{"args": c.args, "expected": c.expected} for c in self.cases],
        }


@dataclass(frozen=True)
class StdioCase:
    """One run: feeding `input` on stdin must print `output`. `group` tags e.g. public/private tests."""

    input: str
    output: str
    group: str | None = None


@dataclass(frozen=True)
class StdioTests:
    """Standard input/output pairs."""

    cases: tuple[StdioCase, ...]
    kind: ClassVar[str] = "stdio"

    def __len__(self) -> int:
        return len(self.cases)

    def to_dict(self) -> dict[str, Any]:
        cases = []
        for c in self.cases:
            case = {"input": c.input, "output": c.output}
            if c.group is not None:
                case["group"] = c.group
            cases.append(case)
        return {"kind": self.kind, "cases": cases}


TestSuite = AssertTests | CallTests | StdioTests
TEST_KINDS = ("assert", "call", "stdio")


def test_units(suite: TestSuite) -> list[str]:
    """Each test of `suite` as text that is equal for the same test in two suites: an assert's source (with the
    suite's setup), a call's function, arguments and expected value, a stdio case's input and output (stripped)."""
    if isinstance(suite, AssertTests):
        return [f"{suite.setup.strip()}\0{a.strip()}" for a in suite.asserts]
    if isinstance(suite, CallTests):
        return [json.dumps([suite.fn_name, c.args, c.expected], sort_keys=True, default=repr) for c in suite.cases]
    return [f"{c.input.strip()}\0{c.output.strip()}" for c in suite.cases]


@dataclass(frozen=True)
class Task:
    """A programming task X with its tests S, from any source.

    `prompt` is what the model is shown: code to complete (`prompt_style="completion"`, HumanEval) or
    a problem statement (`"instruction"`: MBPP, APPS, CodeContests). `solutions` are complete
    reference programs. `split` is the source's split (train/test/...), None where it has none.
    `source` names the loader; `metadata` keeps source-specific fields (starter code, limits, tags).
    `tests` are the private tests that judge a program; `public_tests` (None: none) the ones the model may see.
    """

    id: str
    prompt: str
    tests: TestSuite
    entry_point: str | None = None
    solutions: tuple[str, ...] = ()
    difficulty: str | None = None
    split: str | None = None
    prompt_style: PromptStyle = "instruction"
    source: str = "jsonl"
    metadata: dict[str, Any] = field(default_factory=dict)
    public_tests: TestSuite | None = None

    PUBLIC_SUFFIX: ClassVar[str] = "#public"

    @property
    def num_tests(self) -> int:
        return len(self.tests)

    @property
    def private_tests(self) -> TestSuite:
        """The tests that judge a program: `tests`."""
        return self.tests

    def public_view(self) -> Task | None:
        """The task judged by its public tests only (its id ends in `#public`), to run a program against what
        the model may see; None when it has no public tests. Never used for a metric."""
        if not self.public_tests:
            return None
        return replace(self, id=self.id + self.PUBLIC_SUFFIX, tests=self.public_tests, public_tests=None)

    @property
    def hidden_tests(self) -> int:
        """How many private tests are not among the public ones: all of them when the task has no public tests
        or they are of another kind (HumanEval: docstring calls, `check` asserts), 0 for an MBPP row without
        challenge tests (its private tests are the asserts its prompt shows). A score after a repair turn is
        held out only on such tests: the feedback may quote any public one."""
        if not self.public_tests or self.public_tests.kind != self.tests.kind:
            return len(self.tests)
        public = set(test_units(self.public_tests))
        return sum(unit not in public for unit in test_units(self.tests))

    @property
    def test_kind(self) -> str:
        return self.tests.kind

    def to_dict(self) -> dict[str, Any]:
        """The task in pper's generic JSONL format (JSON-serialisable)."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "prompt_style": self.prompt_style,
            "entry_point": self.entry_point,
            "tests": self.tests.to_dict(),
            "solutions": list(self.solutions),
            "difficulty": self.difficulty,
            "split": self.split,
            "source": self.source,
            "metadata": self.metadata,
            "public_tests": self.public_tests.to_dict() if self.public_tests is not None else None,
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Task:
        """Parse pper's generic format; raises `RowError` naming the offending field."""
        known = {
            "id",
            "prompt",
            "prompt_style",
            "entry_point",
            "tests",
            "solutions",
            "difficulty",
            "split",
            "source",
            "metadata",
            "public_tests",
        }
        unknown = sorted(set(row) - known)
        if unknown:
            raise RowError(unknown[0], f"unknown field (known fields: {', '.join(sorted(known))})")
        style = optional(row, "prompt_style", str) or "instruction"
        if style not in PROMPT_STYLES:
            raise RowError("prompt_style", f"must be one of {PROMPT_STYLES}, got {style!r}")
        solutions = optional(row, "solutions", list) or []
        for i, s in enumerate(solutions):
            if not isinstance(s, str):
                raise RowError(f"solutions[{i}]", f"must be a string, got {type(s).__name__}")
        return cls(
            id=need(row, "id", str),
            prompt=need(row, "prompt", str),
            prompt_style=style,
            entry_point=optional(row, "entry_point", str),
            tests=tests_from_dict(need(row, "tests", dict)),
            solutions=tuple(solutions),
            difficulty=_difficulty(row),
            split=optional(row, "split", str),
            source=optional(row, "source", str) or "jsonl",
            metadata=optional(row, "metadata", dict) or {},
            public_tests=_public_tests(row),
        )


def _public_tests(row: dict[str, Any]) -> TestSuite | None:
    public = optional(row, "public_tests", dict)
    return None if public is None else tests_from_dict(public, "public_tests")


def _difficulty(row: dict[str, Any]) -> str | None:
    value = row.get("difficulty")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError("difficulty", f"must be a string or a number, got {type(value).__name__}")


def tests_from_dict(d: dict[str, Any], prefix: str = "tests") -> TestSuite:
    """Parse the `tests` object of the generic format."""
    kind = need(d, "kind", str, prefix)
    if kind == "assert":
        asserts = need(d, "asserts", list, prefix)
        for i, a in enumerate(asserts):
            if not isinstance(a, str):
                raise RowError(f"{prefix}.asserts[{i}]", f"must be a string, got {type(a).__name__}")
        return AssertTests(asserts=tuple(asserts), setup=optional(d, "setup", str, prefix) or "")
    if kind == "call":
        cases = []
        for where, c in _cases(d, prefix):
            if "expected" not in c:
                raise RowError(f"{where}.expected", "missing")
            cases.append(CallCase(args=need(c, "args", list, where), expected=c["expected"]))
        return CallTests(
            fn_name=need(d, "fn_name", str, prefix),
            cases=tuple(cases),
            unwrap_expected=bool(optional(d, "unwrap_expected", bool, prefix)),
        )
    if kind == "stdio":
        return StdioTests(
            cases=tuple(
                StdioCase(need(c, "input", str, where), need(c, "output", str, where), optional(c, "group", str, where))
                for where, c in _cases(d, prefix)
            )
        )
    raise RowError(f"{prefix}.kind", f"must be one of {TEST_KINDS}, got {kind!r}")


def _cases(d: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """(location, case) for each entry of `cases`, which must all be objects."""
    out = []
    for i, c in enumerate(need(d, "cases", list, prefix)):
        where = f"{prefix}.cases[{i}]"
        if not isinstance(c, dict):
            raise RowError(where, f"must be an object, got {type(c).__name__}")
        out.append((where, c))
    return out
