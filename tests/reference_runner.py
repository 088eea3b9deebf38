"""A minimal trusted runner for the tests: checks that reference solutions pass the tests the loaders
build (it runs only trusted code; the sandbox for model output is pper.execution)."""

from __future__ import annotations

import json
import subprocess
import sys

from pper.tasks import AssertTests, CallTests, StdioTests, Task

_ASSERT_DRIVER = r"""
import json, sys
jobs = json.load(sys.stdin)
out = []
for program, setup, asserts in jobs:
    ns = {"__name__": "__main__"}
    try:
        exec(program, ns)
        exec(setup, ns)
    except BaseException:
        out.append([0, len(asserts)]); continue
    passed = 0
    for a in asserts:
        try:
            exec(a, dict(ns)); passed += 1
        except BaseException:
            pass
    out.append([passed, len(asserts)])
print(json.dumps(out))
"""


def assert_results(jobs: list[tuple[str, AssertTests]]) -> list[tuple[int, int]]:
    """(passed, total) for each (program, tests) pair, all run in one fresh interpreter."""
    payload = json.dumps([[p, t.setup, list(t.asserts)] for p, t in jobs])
    done = subprocess.run(
        [sys.executable, "-c", _ASSERT_DRIVER], input=payload, capture_output=True, text=True, timeout=600, check=True
    )
    return [tuple(r) for r in json.loads(done.stdout)]


def passes_all(task: Task, program: str) -> bool:
    tests = task.tests
    if isinstance(tests, AssertTests):
        passed, total = assert_results([(program, tests)])[0]
        return passed == total
    if isinstance(tests, StdioTests):
        for case in tests.cases:
            run = subprocess.run(
                [sys.executable, "-c", program], input=case.input, capture_output=True, text=True, timeout=30
            )
            if run.stdout.split() != case.output.split():
                return False
        return True
    assert isinstance(tests, CallTests)
    driver = program + f"\nimport json, sys\nprint(json.dumps([{tests.fn_name}(*a) for a in json.load(sys.stdin)]))"
    run = subprocess.run(
        [sys.executable, "-c", driver],
        input=json.dumps([c.args for c in tests.cases]),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    got = json.loads(run.stdout)
    return all(
        g == c.expected or (tests.unwrap_expected and [g] == c.expected) for g, c in zip(got, tests.cases, strict=True)
    )
