"""Line coverage: the lines of a program that ran in its tests, from the sandbox's tracer to the buffer's export."""

import json
import textwrap

import pytest

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.buffer.export import to_jsonl
from pper.execution import Executor, Limits
from pper.execution.coverage import clean_lines, executed_lines
from pper.tasks import AssertTests, StdioCase, StdioTests, Task

BRANCHY = textwrap.dedent(
    '''\
    import math


    def classify(x):
        """Say what x is."""
        # a comment never runs
        if x > 0:
            label = (
                "positive"
            )
        elif x < 0:
            label = "negative"
        else:
            raise ValueError("zero")
        return label
    '''
)
TASK = Task(
    id="t/classify",
    prompt="classify",
    tests=AssertTests(asserts=('assert classify(3) == "positive"', 'assert classify(5) == "positive"')),
)


@pytest.fixture(scope="module")
def executor():
    with Executor(workers=1, coverage=True, calibrate=False) as ex:
        yield ex


def test_only_the_lines_that_ran_are_recorded(executor):
    result = executor.run(TASK, BRANCHY)
    assert result.all_passed and result.coverage_complete
    # the import, the def with its docstring, the taken branch (a statement over 3 lines), the return; not the
    # elif/else branches, the comment or the blank lines
    assert result.executed_lines == (1, 4, 5, 7, 8, 9, 10, 15)
    for test in result.tests:  # per test: what the call ran (the def's header with its body), not the load
        assert test.executed_lines == (4, 5, 7, 8, 9, 10, 15)


def test_the_untaken_branch_is_recorded_when_a_test_takes_it(executor):
    task = Task(id="t/both", prompt="", tests=AssertTests(asserts=('assert classify(-1) == "negative"',)))
    result = executor.run(task, BRANCHY)
    assert result.executed_lines == (1, 4, 5, 7, 11, 12, 15)


def test_coverage_is_off_unless_asked(executor):
    with Executor(workers=1, calibrate=False) as plain:
        assert plain.run(TASK, BRANCHY).executed_lines is None
    assert executor.run(TASK, BRANCHY, coverage=False).executed_lines is None


def test_a_program_that_does_not_compile_or_load_ran_no_line(executor):
    assert executor.run(TASK, "def classify(x:\n    return 1\n").executed_lines == ()
    crashed = executor.run(TASK, "import math\nraise SystemExit(3)\ndef classify(x):\n    return 1\n")
    assert crashed.passed == 0 and crashed.executed_lines == (1, 2)  # what ran before it failed


def test_a_long_loop_is_traced_within_a_bound_and_keeps_its_verdict(executor):
    # An untaken branch keeps the loop's code object traced; MAX_EVENTS stops tracing after a bounded cost,
    # the coverage is then marked partial, and the verdict is the one without coverage.
    program = (
        "def classify(x):\n    n = 0\n    for i in range(3_000_000):\n        if i < 0:\n            n -= 1\n"
        "        n += 1\n    return 'positive'\n"
    )
    result = executor.run(TASK, program)
    assert result.all_passed and not result.coverage_complete
    assert {1, 2, 3, 4, 6} <= set(result.executed_lines) and 5 not in result.executed_lines


def test_stdio_programs_are_covered(executor):
    task = Task(id="t/io", prompt="", tests=StdioTests(cases=(StdioCase("2\n", "4\n"),)))
    program = "n = int(input())\nif n > 100:\n    print('big')\nprint(n * 2)\n"
    result = executor.run(task, program)
    assert result.all_passed and result.executed_lines == (1, 2, 4)


def test_a_program_cannot_claim_lines_it_does_not_have():
    assert clean_lines([1, 2, 99, -1, "3", True, 2.0], 5) == (1, 2)
    assert clean_lines("everything", 5) == ()


@pytest.mark.parametrize(
    "program, reported, expected",
    [
        # try / except / else / finally: a clause's line runs when its block runs; `try:` when its body does
        (
            "try:\n    x = 1\nexcept KeyError:\n    x = 2\nelse:\n    x = 3\nfinally:\n    y = 4\n",
            {2, 6, 8},
            {1, 2, 5, 6, 7, 8},
        ),
        # a decorated def: the decorator and def lines ran at load, the body did not
        ("@staticmethod\ndef f():\n    return 1\n", {1, 2}, {1, 2}),
        # a statement over several lines runs whole; a comment inside it does not
        ("x = [\n    1,\n    # one\n    2,\n]\n", {1}, {1, 2, 4, 5}),
        # for / else, with the loop's body untaken
        ("for i in []:\n    pass\nelse:\n    z = 1\n", {1, 4}, {1, 3, 4}),
    ],
)
def test_reported_lines_complete_to_the_statements_that_ran(program, reported, expected):
    assert set(executed_lines(program, reported)) == expected


def test_coverage_is_stored_and_exported(executor, tmp_path):
    result = executor.run(TASK, BRANCHY)
    with ReplayBuffer(tmp_path / "buffer.sqlite") as buffer:
        buffer.add_tasks([TASK])
        covered, plain = buffer.add_programs(
            [NewProgram(TASK.id, BRANCHY, -3.0, 10, "m"), NewProgram(TASK.id, BRANCHY + "\n# two\n", -3.0, 10, "m")]
        )
        buffer.add_executions(
            [Execution(covered, result), Execution(plain, executor.run(TASK, BRANCHY, coverage=False))]
        )
        stored = buffer.program(covered).result
        assert stored == result  # every test's lines, and whether the coverage is complete
        assert buffer.program(plain).result.executed_lines is None
        assert buffer.executed_program_ids() == {covered}
        to_jsonl(buffer, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["executed_lines"] == list(result.executed_lines) and rows[1]["executed_lines"] is None
    assert rows[0]["prefix"] == ""


def test_limits_with_coverage_still_stop_a_slow_program():
    with Executor(limits=Limits(wall_time=1.0, cpu_time=1.0), workers=1, coverage=True, calibrate=False) as ex:
        result = ex.run(TASK, "def classify(x):\n    while True:\n        pass\n")
    assert result.verdicts == ("timeout", "timeout")


@pytest.mark.parametrize("brk", ["\r\n", "\r"])
def test_lines_are_numbered_as_python_numbers_them_whatever_the_line_breaks(executor, brk):
    # "\u2028" in the docstring and "\x0c" in the comment break no line for Python (they do for str.splitlines)
    program = BRANCHY.replace("what x is", "what\u2028x is").replace("# a comment", "# a\x0ccomment")
    result = executor.run(TASK, program.replace("\n", brk))
    assert result.all_passed and result.executed_lines == (1, 4, 5, 7, 8, 9, 10, 15)


def test_a_match_statement_is_covered_and_keeps_its_verdict(executor):
    task = Task(id="t/match", prompt="", tests=AssertTests(asserts=("assert name(1) == 'one'",)))
    program = "def name(x):\n    match x:\n        case 1:\n            return 'one'\n"
    program += "        case _:\n            return '?'\n"
    result = executor.run(task, program)
    assert result.all_passed and result.coverage_complete
    assert result.executed_lines == (1, 2, 3, 4)  # not the untaken `case _:`


def test_statements_that_compile_to_nothing_ran_with_their_block(executor):
    task = Task(id="t/glob", prompt="", tests=AssertTests(asserts=("assert bump() == 1",)))
    program = "count = 0\ny: int\n\n\ndef bump():\n    global count\n    z: int\n    count += 1\n    return count\n"
    result = executor.run(task, program)
    assert result.all_passed and result.executed_lines == (1, 2, 5, 6, 7, 8, 9)  # `global`, bare annotations too


def test_tracing_cut_short_while_loading_marks_the_coverage_partial(executor):
    program = "s = 0\nfor i in range(30000):\n    s += i\nY = 5\n\n\ndef classify(x):\n    return 'positive'\n"
    result = executor.run(TASK, program)
    assert result.all_passed and not result.coverage_complete  # so FGO does not mask `Y = 5`, which ran
