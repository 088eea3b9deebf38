"""Call-based and stdin/stdout tests, the comparison rules, plans and the plain-value channel."""

from collections import Counter, OrderedDict, namedtuple

import pytest

from pper.execution import Executor, Limits, build_plan
from pper.execution.judge import call_matches, stdout_matches
from pper.execution.values import TooLarge, Unencodable, decode, dumps, encode, loads
from pper.tasks import AssertTests, CallCase, CallTests, StdioCase, StdioTests, Task, load_tasks


@pytest.fixture(scope="module")
def executor():
    with Executor(limits=Limits(wall_time=2.0, cpu_time=2.0, load_time=4.0), workers=2) as ex:
        yield ex


@pytest.mark.filterwarnings("ignore:.*skipped")
def test_fixture_solutions_pass_and_wrong_programs_fail(executor, apps_path, codecontests_path):
    tasks = load_tasks(f"apps:{apps_path}") + load_tasks(f"codecontests:{codecontests_path}")
    results = list(executor.map((t, t.solutions[0]) for t in tasks))
    assert all(r.all_passed for r in results), [
        (t.id, r.verdicts, r.error) for t, r in zip(tasks, results, strict=True)
    ]
    wrong = ["print(1)\n" if t.test_kind == "stdio" else f"def {t.entry_point}(*a):\n    return 0\n" for t in tasks]
    assert not any(r.all_passed for r in executor.map(zip(tasks, wrong, strict=True)))


def test_stdio_verdicts(executor):
    task = Task(
        id="echo",
        prompt="",
        tests=StdioTests(cases=(StdioCase("3 4\n", "7\n"), StdioCase("1 1\n", "2\n"), StdioCase("0.1 0.2\n", "0.3\n"))),
    )
    program = "a, b = map(float, input().split())\ns = a + b\nprint(int(s) if s == int(s) else s)\n"
    assert executor.run(task, program).verdicts == ("passed", "passed", "passed")  # 0.30000000000000004 ~ 0.3
    assert executor.run(task, "import sys\nsys.exit(3)\n").verdicts == ("runtime_error",) * 3
    assert executor.run(task, "import sys\nprint(7)\nsys.exit(0)\n").verdicts == (
        "passed",
        "wrong_answer",
        "wrong_answer",
    )
    assert executor.run(task, "while True:\n    pass\n").verdicts == ("timeout",) * 3
    assert executor.run(task, "print(int(input().split()[0]) +\n").verdicts == ("syntax_error",) * 3
    error = executor.run(task, "raise KeyError('k')\n")
    assert error.verdicts == ("runtime_error",) * 3 and "KeyError" in error.error


def test_call_based_verdicts(executor):
    task = Task(
        id="pair",
        prompt="",
        entry_point="pair",
        tests=CallTests(
            fn_name="pair",
            unwrap_expected=True,
            cases=(CallCase([1], [[1, 2]]), CallCase([5], [[5, 6]]), CallCase([0], [[0, 1]])),
        ),
    )
    assert executor.run(task, "def pair(x):\n    return (x, x + 1)\n").all_passed  # tuple -> list, unwrapped
    assert executor.run(task, "class Solution:\n    def pair(self, x):\n        return [x, x + 1]\n").all_passed
    missing = executor.run(task, "def other(x):\n    return x\n")
    assert missing.verdicts == ("runtime_error",) * 3 and "defines no function 'pair'" in missing.error
    wrong = executor.run(task, "def pair(x):\n    return [x]\n")
    assert wrong.verdicts == ("wrong_answer",) * 3 and "returned [1], expected [[1, 2]]" in wrong.error


def test_arguments_are_fresh_for_every_test(executor):
    task = Task(
        id="pop", prompt="", tests=CallTests(fn_name="pop", cases=(CallCase([[1, 2]], 2), CallCase([[1, 2]], 2)))
    )
    assert executor.run(task, "def pop(xs):\n    return xs.pop()\n").all_passed


def test_stdout_rule():
    assert stdout_matches("1 2\n3\n\n", "1 2 3")
    assert stdout_matches("0.3333333\n", "0.33333333")
    assert not stdout_matches("0.34", "0.33") and not stdout_matches("YES", "yes")
    assert not stdout_matches("1 2", "1 2 3") and not stdout_matches("nan", "nan0") and not stdout_matches("", "1")


def test_call_rule():
    assert call_matches((1, 2), [1, 2], False) and call_matches(3, [3], True) and not call_matches(3, [3], False)
    assert not call_matches([3], [[4]], True)


def test_plans_split_asserts_and_keep_expected_values_out_of_the_sandbox():
    task = Task(
        id="t",
        prompt="",
        entry_point="f",
        tests=AssertTests(
            asserts=(
                "assert f(1) == 2",
                "import math\nassert math.isclose(f(2), 3.0, rel_tol=1e-9)",
                "assert sorted(f([3, 1])) == [1, 3] and f(0) != 9",
                "for i in range(3):\n    assert f(i) == i + 1",
                "assert helper(f(1)) == 2",
            ),
            setup="candidate = f",
        ),
    )
    plan = build_plan(task)
    outside = [c for c in plan.checks if c is not None]
    assert [c.calls for c in outside] == [("f(1)",), ("f(2)",), ("f([3, 1])", "f(0)")]
    assert outside[2].check == "(sorted(_v0) == [1, 3] and _v1 != 9)" and outside[1].prelude == "import math"
    assert plan.checks[3] is None and plan.checks[4] is None  # loops and unknown helpers run inside
    sandbox_view = str(plan.public)
    assert "== 2" not in sandbox_view.replace("helper(f(1)) == 2", "") and "3.0" not in sandbox_view
    assert plan.public["tests"][0] == {"prelude": "", "calls": ["f(1)"]}


def test_plain_values_round_trip_and_others_are_refused():
    Point = namedtuple("Point", "x y")
    values = [
        None,
        True,
        3,
        2.5,
        float("inf"),
        "s",
        b"\x00b",
        1 + 2j,
        [1, (2, 3)],
        {"a": {1, 2}},
        frozenset({4}),
        {(1, 2): [3]},
        Counter("aab"),
        OrderedDict(a=1),
        Point(1, 2),
    ]
    back = loads(dumps(values))
    assert back == values
    assert [type(v) for v in back[-3:]] == [dict, dict, tuple]  # subclasses cross as their builtin base
    for bad in (object(), iter([1]), lambda: 1, [[]] * 0 + [type]):
        with pytest.raises(Unencodable):
            encode(bad)
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(Unencodable, match="nested"):
        encode(deep)
    with pytest.raises(TooLarge):
        encode([0] * 1_000_001)
    with pytest.raises(ValueError):
        decode({"zz": 1})


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="wall_time must be positive"):
        Limits(wall_time=0)
