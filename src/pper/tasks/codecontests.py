"""CodeContests (Li et al. 2022) in the Hugging Face `deepmind/code_contests` row format.

Rows have `name`, `description`, `public_tests`, `private_tests` and `generated_tests` (each
`{"input": [...], "output": [...]}`), `difficulty` and `source` (integer enums), `solutions`
(`{"language": [...], "solution": [...]}`), `time_limit` and `memory_limit_bytes`. Every test group is
kept, each case tagged with its group, and all of them judge; the public group (the statement's examples) is also
the task's public tests. The Python 3 solutions become reference solutions.
"""

from __future__ import annotations

from typing import Any

from .model import StdioCase, StdioTests, Task
from .rows import RowError, need, optional

TEST_GROUPS = ("public_tests", "private_tests", "generated_tests")
PYTHON3 = 3  # the `Language` enum: 0 unknown, 1 Python 2, 2 C++, 3 Python 3, 4 Java
DIFFICULTIES = (
    "UNKNOWN_DIFFICULTY",
    "EASY",
    "MEDIUM",
    "HARD",
    "HARDER",
    "HARDEST",
    "EXTERNAL",
    *"ABCDEFGHIJKLMNOPQRSTUV",
)
SOURCES = ("UNKNOWN_SOURCE", "CODECHEF", "CODEFORCES", "HACKEREARTH", "CODEJAM", "ATCODER", "AIZU")


def parse_codecontests(row: dict[str, Any], split: str | None = None) -> Task | None:
    name = need(row, "name", str)
    cases: list[StdioCase] = []
    for group in TEST_GROUPS:
        tests = optional(row, group, dict)
        if tests is None:
            continue
        inputs, outputs = tests.get("input") or [], tests.get("output") or []
        if len(inputs) != len(outputs):
            raise RowError(group, f"has {len(inputs)} inputs but {len(outputs)} outputs")
        for i, (stdin, stdout) in enumerate(zip(inputs, outputs, strict=True)):
            if not isinstance(stdin, str) or not isinstance(stdout, str):
                raise RowError(f"{group}[{i}]", "input and output must be strings")
            cases.append(StdioCase(input=stdin, output=stdout, group=group.removesuffix("_tests")))
    if not cases:
        return None
    solutions = optional(row, "solutions", dict) or {}
    languages, texts = solutions.get("language") or [], solutions.get("solution") or []
    if len(languages) != len(texts):
        raise RowError("solutions", f"has {len(languages)} languages but {len(texts)} solutions")
    time_limit = optional(row, "time_limit", dict) or {}
    return Task(
        id=f"codecontests/{name}",
        prompt=need(row, "description", str),
        prompt_style="instruction",
        entry_point=None,
        tests=StdioTests(cases=tuple(cases)),
        public_tests=StdioTests(cases=tuple(c for c in cases if c.group == "public")) or None,
        solutions=tuple(s for lang, s in zip(languages, texts, strict=True) if lang == PYTHON3),
        difficulty=_enum(row, "difficulty", DIFFICULTIES),
        split=split,
        source="codecontests",
        metadata={
            "origin": _enum(row, "source", SOURCES),
            "time_limit_s": (time_limit.get("seconds") or 0) + (time_limit.get("nanos") or 0) / 1e9 or None,
            "memory_limit_bytes": optional(row, "memory_limit_bytes", int),
            "cf_rating": optional(row, "cf_rating", int),
            "cf_tags": optional(row, "cf_tags", list) or [],
        },
    )


def _enum(row: dict[str, Any], key: str, names: tuple[str, ...]) -> str | None:
    value = optional(row, key, int)
    if value is None:
        return None
    if not 0 <= value < len(names):
        raise RowError(key, f"unknown enum value {value}")
    return names[value]
