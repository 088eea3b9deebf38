"""Verdicts from what the sandbox observed, decided outside it.

Standard output is compared as APPS does: the output and the expected text are split into
whitespace-separated tokens (so line breaks, blank lines and trailing spaces do not matter) and must be
equal token by token; where they differ, both tokens must parse as numbers and agree within
|a - b| <= 1e-8 + 1e-5 * |b| (numpy's `allclose` tolerances). Call results are compared with `==` on
plain data after a top-level tuple becomes a list; with `unwrap_expected` (APPS) a result also matches
`expected[0]`.
"""

from __future__ import annotations

import builtins
import math
from dataclasses import replace
from typing import Any

from ..source import line_starts
from .coverage import ProgramLines, clean_lines
from .plan import SAFE_FUNCTIONS, OutsideCheck, Plan
from .results import (
    MEMORY_LIMIT,
    OUTPUT_LIMIT,
    PASSED,
    RUNTIME_ERROR,
    SYNTAX_ERROR,
    TIMEOUT,
    WRONG_ANSWER,
    ProgramResult,
    TestResult,
)
from .values import loads

_STATUS_VERDICTS = {
    "timeout": TIMEOUT,
    "memory": MEMORY_LIMIT,
    "output": OUTPUT_LIMIT,
    "syntax_error": SYNTAX_ERROR,
    "error": RUNTIME_ERROR,
    "fail": WRONG_ANSWER,
    "unencodable": WRONG_ANSWER,
}
_SAFE_BUILTINS = {name: getattr(builtins, name) for name in SAFE_FUNCTIONS}
MESSAGES = {
    TIMEOUT: "time limit exceeded",
    MEMORY_LIMIT: "memory limit exceeded",
    OUTPUT_LIMIT: "output limit exceeded",
}


def judge(plan: Plan, response: dict[str, Any], program: str | None = None) -> ProgramResult:
    """The per-test verdicts of one sandbox response; with the `program`'s text, and where the sandbox
    collected coverage, the lines of it that ran (`coverage.executed_lines`), per test and overall."""
    load = response["load"]
    if load["status"] != "ok":
        verdict = _STATUS_VERDICTS.get(load["status"], RUNTIME_ERROR)
        error = load.get("error") or MESSAGES.get(verdict)
        if verdict == WRONG_ANSWER:  # a failure while loading is never a wrong answer
            verdict = RUNTIME_ERROR
        tests = tuple(TestResult(verdict, error) for _ in plan.checks)
    else:
        tests = tuple(_test(plan, check, obs) for check, obs in zip(plan.checks, response["tests"], strict=True))
    result = ProgramResult(tests=tests, time=response.get("time", 0.0))
    if program is None or not response.get("coverage"):
        return result
    try:
        return _with_coverage(result, response, program)
    except Exception:  # noqa: BLE001 - coverage must never change a verdict: the result without it, marked partial
        return replace(result, coverage_complete=False)


def _with_coverage(result: ProgramResult, response: dict[str, Any], program: str) -> ProgramResult:
    """`result` with the lines of `program` that ran, from the lines the sandbox reported (untrusted)."""
    num_lines = len(line_starts(program))
    load = clean_lines(response["load"].get("lines"), num_lines)
    observed = response["tests"] if response["load"]["status"] == "ok" else []
    per_test = [clean_lines(obs.get("lines"), num_lines) for obs in observed]
    lines = ProgramLines(program)  # parsed once for all the tests
    done: dict[tuple[int, ...], tuple[int, ...]] = {}  # tests that ran the same lines (the usual case)
    for reported_in_test in per_test:
        if reported_in_test not in done:
            done[reported_in_test] = lines.executed(reported_in_test)
    tests = tuple(
        replace(t, executed_lines=done[per_test[i]]) if i < len(per_test) else t for i, t in enumerate(result.tests)
    )
    reported = set(load).union(*per_test)
    complete = not response["load"].get("partial") and not any(obs.get("partial") for obs in observed)
    return replace(result, tests=tests, executed_lines=lines.executed(reported), coverage_complete=complete)


def _test(plan: Plan, check: Any, obs: dict[str, Any]) -> TestResult:
    time = obs.get("time", 0.0)
    status = obs.get("status")
    if status != "ok":
        verdict = _STATUS_VERDICTS.get(status, RUNTIME_ERROR)
        return TestResult(verdict, obs.get("error") or MESSAGES.get(verdict), time)
    try:
        if plan.kind == "stdio":
            ok, error = stdout_matches(obs.get("stdout", ""), check), f"wrong output: {_short(obs.get('stdout', ''))}"
        elif plan.kind == "call":
            (value,) = loads(obs["values"])
            expected, unwrap = check
            ok, error = call_matches(value, expected, unwrap), f"returned {_short(value)}, expected {_short(expected)}"
        elif check is None:  # an assert that ran whole inside the sandbox and did not raise
            ok, error = True, None
        else:
            values = loads(obs["values"])
            ok, error = assert_holds(check, values), _assert_message(check, values)
    except (KeyError, ValueError, TypeError) as e:
        return TestResult(WRONG_ANSWER, f"unusable result: {e}", time)
    return TestResult(PASSED, None, time) if ok else TestResult(WRONG_ANSWER, error, time)


def assert_holds(check: OutsideCheck, values: list[Any]) -> bool:
    """Evaluate the check (trusted test code) on the plain values the sandbox returned."""
    scope = {f"_v{i}": v for i, v in enumerate(values)}
    try:
        return bool(eval(check.code, {"__builtins__": _SAFE_BUILTINS, "math": math}, scope))
    except Exception:  # e.g. comparing incompatible types: the assert would have failed
        return False


def call_matches(value: Any, expected: Any, unwrap: bool) -> bool:
    if isinstance(value, tuple):
        value = list(value)
    if value == expected:
        return True
    return unwrap and isinstance(expected, list) and len(expected) == 1 and value == expected[0]


def stdout_matches(output: str, expected: str) -> bool:
    got, want = output.split(), expected.split()
    if got == want:
        return True
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if a == b:
            continue
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        if not (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= 1e-8 + 1e-5 * abs(y)):
            return False
    return True


def _assert_message(check: OutsideCheck, values: list[Any]) -> str:
    got = ", ".join(f"{call} returned {_short(v)}" for call, v in zip(check.calls, values, strict=True))
    return f"{check.source.splitlines()[-1].strip()} failed: {got}"


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
