"""Public and private tests (RLEF): what each loader shows the model, what judges, and that no metric is computed on
the public tests alone."""

import json

import pytest

from pper.errors import DataFormatError
from pper.evaluation.evaluate import test_samples_file as run_samples_file
from pper.execution import Executor
from pper.generation.prompts import build_prompt
from pper.tasks import AssertTests, StdioCase, StdioTests, Task, load_tasks
from pper.tasks.apps import parse_apps
from pper.tasks.humaneval import docstring_examples
from pper.tasks.mbpp import parse_mbpp

MBPP_ROW = {
    "task_id": 11,
    "text": "Write a python function to remove first and last occurrence of a given character from the string.",
    "code": "def remove_Occ(s,ch):\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]",
    "test_list": [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ],
    "test_setup_code": "",
    "challenge_test_list": ['assert remove_Occ("hellolloll","l") == "helollol"', 'assert remove_Occ("","l") == ""'],
}


DOUBLE = Task(
    id="t/1",
    prompt="double x",
    entry_point="f",
    tests=AssertTests(asserts=("assert f(1) == 2", "assert f(5) == 10")),
    public_tests=AssertTests(asserts=("assert f(1) == 2",)),
)


def test_mbpp_public_tests_are_the_shown_asserts_and_challenge_tests_judge_too():
    task = parse_mbpp(MBPP_ROW)
    assert task.public_tests == AssertTests(asserts=tuple(MBPP_ROW["test_list"]))
    assert task.tests.asserts == tuple(MBPP_ROW["test_list"] + MBPP_ROW["challenge_test_list"])
    assert task.private_tests is task.tests
    prompt = build_prompt(task).text  # the prompt shows the public asserts, and no challenge test
    assert all(a in prompt for a in MBPP_ROW["test_list"])
    assert not any(a in prompt for a in MBPP_ROW["challenge_test_list"])
    plain = parse_mbpp({**MBPP_ROW, "challenge_test_list": []})
    assert build_prompt(plain).text == prompt  # prompts do not change with the private tests
    # a score after a repair turn is held out only on tests beyond the public ones (the feedback quotes those)
    assert task.hidden_tests == 2 and plain.hidden_tests == 0


def test_hidden_tests_counts_the_private_tests_the_model_never_sees():
    from pper.tasks import CallCase, CallTests

    calls = CallTests("f", (CallCase([1], 2), CallCase([[1, 2]], {"a": 1})))
    shown = CallTests("f", (CallCase([[1, 2]], {"a": 1}),))
    assert Task("t/c", "p", tests=calls, public_tests=shown).hidden_tests == 1
    assert Task("t/c", "p", tests=calls, public_tests=calls).hidden_tests == 0
    assert Task("t/c", "p", tests=calls).hidden_tests == 2  # no public tests: none seen
    stdio = StdioTests((StdioCase("1\n", "2\n"), StdioCase("3", "4")))
    assert Task("t/s", "p", tests=stdio, public_tests=StdioTests((StdioCase("1", "2"),))).hidden_tests == 1
    asserts = AssertTests(("assert f(1) == 2",))
    assert Task("t/a", "p", tests=asserts, public_tests=calls).hidden_tests == 1  # other kinds: none is the same
    assert Task("t/a", "p", tests=asserts, public_tests=AssertTests((" assert f(1) == 2",))).hidden_tests == 0
    other_setup = AssertTests(("assert f(1) == 2",), setup="def f(x): return 2")
    assert Task("t/a", "p", tests=other_setup, public_tests=asserts).hidden_tests == 1
    he = load_tasks("humaneval", limit=164)  # docstring calls shown, `check` asserts judging: every task counts
    assert all(t.hidden_tests == len(t.tests) for t in he)


def test_every_mbpp_reference_passes_its_public_and_private_tests(mbpp_path):
    tasks = [t for t in load_tasks(f"mbpp:{mbpp_path}") if t.metadata["challenge_test_list"]]
    assert len(tasks) == 11
    with Executor(workers=2) as ex:
        private = list(ex.map([(t, t.solutions[0]) for t in tasks]))
        public = list(ex.map([(t.public_view(), t.solutions[0]) for t in tasks]))
    assert all(r.passed == r.total > 3 for r in private)
    assert all(r.passed == r.total == 3 for r in public)


@pytest.mark.parametrize(
    "doc, expected",
    [
        (">>> f([1, 2])\n    3\n>>> f([])\n    0", ["assert f([1, 2]) == 3", "assert f([]) == 0"]),
        (
            "For example:\nf(1) => true\nf(2) ➞ [1, 2]\n* f('a') -> 'b'.",
            ["assert f(1) == True", "assert f(2) == [1, 2]", "assert f('a') == 'b'"],
        ),
        (
            "Examples:\n  f(-12) ==> (1, 1)\n  for f(3) == 4\n  f(2) = 4",
            ["assert f(-12) == (1, 1)", "assert f(3) == 4", "assert f(2) == 4"],
        ),
        (">>> round(f([1, 2]), 2) # f(x) = 1 + 2x\n-0.5", ["assert round(f([1, 2]), 2) == -0.5"]),
        (">>> f([1, 2]) == -9\n>>> f([]) == None", ["assert f([1, 2]) == -9", "assert f([]) == None"]),
        ("f(x) returns the double of x, e.g. f(1) = 1 + 1 = 2", []),  # expected value not a literal
        ("g(1) == 2\n>>> f(x)\n1\n>>> f(open('a'))\n1", []),  # another function, a name, a call as argument
        (">>> f(1)\n1\n>>> f(1)\n1", ["assert f(1) == 1"]),  # repeats kept once
    ],
)
def test_docstring_examples_become_call_and_expected_asserts(doc, expected):
    prompt = f'def f(x):\n    """{doc}\n    """\n'
    assert list(docstring_examples(prompt, "f")) == expected


def test_humaneval_public_tests_come_from_the_docstrings_and_references_pass_them():
    tasks = load_tasks("humaneval")
    with_public = [t for t in tasks if t.public_tests]
    assert len(with_public) >= 130  # 137 of 164 at the time of writing; the others' examples are prose
    first = tasks[0]
    assert first.public_tests.asserts == (
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
        "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
    )
    assert first.tests.asserts[0] not in first.public_tests.asserts  # the check tests stay private
    for t in with_public:
        assert all(a.startswith("assert ") and f"{t.entry_point}(" in a for a in t.public_tests.asserts), t.id
    with Executor(workers=2) as ex:
        views = [t.public_view() for t in with_public]
        ex.calibrate(views)
        results = list(ex.map([(v, t.solutions[0]) for v, t in zip(views, with_public, strict=True)]))
    failing = {t.id for t, r in zip(with_public, results, strict=True) if r.passed != r.total}
    assert failing == set()  # the six wrong docstring examples (HumanEval/47, 116, 130, 148) are left out


def test_codecontests_public_tests_are_the_public_group(codecontests_path):
    with pytest.warns(UserWarning, match="skipped 1 rows without tests"):
        task = load_tasks(f"codecontests:{codecontests_path}")[0]
    assert [c.group for c in task.public_tests.cases] == ["public"]
    assert len(task.tests) == 4  # every group judges, the public one included


def test_apps_public_tests_are_the_cases_the_statement_shows():
    row = {
        "problem_id": 7,
        "question": "Print the sum.\n\n-----Example-----\nInput\n1 2\n\nOutput\n3\n",
        "input_output": json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}),
        "solutions": json.dumps(["print(sum(map(int, input().split())))"]),
    }
    task = parse_apps(row)
    assert task.public_tests == StdioTests(cases=(StdioCase("1 2\n", "3\n"),))
    assert len(task.tests) == 2
    hidden = parse_apps({**row, "question": "Print the sum."})
    assert hidden.public_tests is None and hidden.public_view() is None
    # a hidden case whose numbers happen to occur in the text is not an example ("1 <= n" and "2n" are not lines)
    io = json.dumps({"inputs": ["5\n", "1\n"], "outputs": ["10\n", "2\n"]})
    prose = parse_apps({**row, "question": "1 <= n <= 10^5, print 2n.\nExample\n5\n10\n", "input_output": io})
    assert prose.public_tests == StdioTests(cases=(StdioCase("5\n", "10\n"),))
    # two examples (4 -> 1, 7 -> 2); the hidden cases 1 -> 2 and 2 -> 1 only echo the examples' outputs
    io = json.dumps({"inputs": ["4\n", "7\n", "1\n", "2\n"], "outputs": ["1\n", "2\n", "2\n", "1\n"]})
    statement = "Examples\nInput\n4\nOutput\n1\n\nInput\n7\n\n-----Output-----\n2\n"
    two = parse_apps({**row, "question": statement, "input_output": io})
    assert two.public_tests == StdioTests(cases=(StdioCase("4\n", "1\n"), StdioCase("7\n", "2\n")))


def test_an_instruction_prompt_shows_the_public_tests_only():
    task = Task(
        id="t/2",
        prompt="Write dbl(x).",
        entry_point="dbl",
        tests=AssertTests(asserts=("assert dbl(1) == 2", "assert dbl(7) == 14")),
        public_tests=AssertTests(asserts=("assert dbl(1) == 2",)),
    )
    text = build_prompt(task).text
    assert "assert dbl(1) == 2" in text and "dbl(7)" not in text
    assert "dbl(7)" in build_prompt(Task(id="t/3", prompt="Write dbl(x).", tests=task.tests)).text  # no public tests
    from pper.tasks import CallCase, CallTests

    calls = CallTests("dbl", (CallCase([1], 2),))  # public tests of another kind: no private assert is shown either
    assert (
        "assert" not in build_prompt(Task(id="t/4", prompt="Write dbl(x).", tests=task.tests, public_tests=calls)).text
    )


def test_jsonl_tasks_give_both_lists_and_old_rows_have_no_public_tests(tmp_path):
    task = DOUBLE
    row = task.to_dict()
    assert Task.from_dict(json.loads(json.dumps(row))) == task
    old = {k: v for k, v in row.items() if k != "public_tests"}
    assert Task.from_dict(old).public_tests is None
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({**row, "public_tests": {"kind": "nope"}}) + "\n")
    with pytest.raises(DataFormatError, match="public_tests.kind"):
        load_tasks(f"jsonl:{path}")


def test_held_out_metrics_are_computed_on_the_private_tests(tmp_path):
    """A program that passes every public test but fails a private one is not counted as passing."""
    task = DOUBLE
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "t/1", "program": "def f(x):\n    return 2\n"}) + "\n")
    with Executor(workers=1, calibrate=False) as ex:
        assert ex.run(task.public_view(), "def f(x):\n    return 2\n").pass_rate == 1.0
        rows = run_samples_file(samples, [task], ex, show_progress=False)
    assert [r["pass_rate"] for r in rows] == [0.5] and rows[0]["passed"] is False
