"""Verdicts and results of running programs against their tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PASSED = "passed"
WRONG_ANSWER = "wrong_answer"
RUNTIME_ERROR = "runtime_error"
TIMEOUT = "timeout"
MEMORY_LIMIT = "memory_limit"
OUTPUT_LIMIT = "output_limit"
SYNTAX_ERROR = "syntax_error"
VERDICTS = (PASSED, WRONG_ANSWER, RUNTIME_ERROR, TIMEOUT, MEMORY_LIMIT, OUTPUT_LIMIT, SYNTAX_ERROR)


@dataclass(frozen=True)
class TestResult:
    """The verdict of one test, the error text where it did not pass, its wall time in seconds, and, where
    coverage was collected, the program's lines that ran during it (`pper.execution.coverage`)."""

    verdict: str
    error: str | None = None
    time: float = 0.0
    executed_lines: tuple[int, ...] | None = None

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class ProgramResult:
    """A program's results on its task's test suite.

    executed_lines: where coverage was collected, the sorted 1-based lines of the program that ran while it
    loaded or in any test (None: not collected). coverage_complete: False where tracing was cut short in
    some test (`coverage.MAX_EVENTS`), so a line that ran may be missing.
    """

    tests: tuple[TestResult, ...]
    time: float = 0.0
    executed_lines: tuple[int, ...] | None = None
    coverage_complete: bool = True

    @property
    def total(self) -> int:
        return len(self.tests)

    @property
    def passed(self) -> int:
        return sum(t.verdict == PASSED for t in self.tests)

    @property
    def pass_rate(self) -> float:
        """passed / total (the paper's eq. 4 as a fraction)."""
        return self.passed / self.total if self.tests else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.tests) and self.passed == self.total

    @property
    def verdicts(self) -> tuple[str, ...]:
        return tuple(t.verdict for t in self.tests)

    @property
    def error(self) -> str | None:
        """The first error text, kept for feedback-driven repair."""
        return next((t.error for t in self.tests if t.verdict != PASSED and t.error), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass_rate": self.pass_rate,
            "passed": self.all_passed,
            "passed_tests": self.passed,
            "total_tests": self.total,
            "verdicts": list(self.verdicts),
            "errors": [t.error for t in self.tests],
            "error": self.error,
            "time": round(self.time, 6),
            **({} if self.executed_lines is None else {"executed_lines": list(self.executed_lines)}),
        }
