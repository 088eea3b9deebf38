import json

import pytest

from pper.errors import DataFormatError
from pper.tasks import CallTests, StdioTests, load_tasks
from reference_runner import passes_all


def test_apps_rows_give_stdio_and_call_based_tasks(apps_path):
    with pytest.warns(UserWarning, match="skipped 1 rows without tests"):
        tasks = {t.id: t for t in load_tasks(f"apps:{apps_path}")}
    assert sorted(tasks) == ["apps/9001", "apps/9002", "apps/9003", "apps/9004"]
    stdio, call = tasks["apps/9002"], tasks["apps/9003"]
    assert isinstance(stdio.tests, StdioTests) and stdio.entry_point is None
    assert stdio.tests.cases[2].input == "4\n9 9 0 3\n"  # a list of lines becomes one text
    assert isinstance(call.tests, CallTests) and call.tests.fn_name == "reverse_words" == call.entry_point
    assert call.tests.unwrap_expected and call.tests.cases[0].args == ["hello world"]
    assert call.difficulty == "introductory" and call.metadata["starter_code"].startswith("def reverse_words")


@pytest.mark.filterwarnings("ignore:.*skipped")
def test_apps_reference_solutions_pass_and_wrong_programs_fail(apps_path):
    for task in load_tasks(f"apps:{apps_path}"):
        assert passes_all(task, task.solutions[0]), task.id
        wrong = "print(0)\n" if isinstance(task.tests, StdioTests) else f"def {task.entry_point}(*a):\n    return 0\n"
        assert not passes_all(task, wrong), task.id


def test_codecontests_keeps_all_test_groups_and_python3_solutions(codecontests_path):
    with pytest.warns(UserWarning, match="skipped 1 rows without tests"):
        tasks = load_tasks(f"codecontests:{codecontests_path}")
    assert len(tasks) == 3
    first = tasks[0]
    assert first.id == "codecontests/9001_A. Double It" and first.difficulty == "A"
    assert [c.group for c in first.tests.cases] == ["public", "private", "private", "generated"]
    assert len(first.solutions) == 1 and "2 * int(input())" in first.solutions[0]  # C++ and Python 2 dropped
    assert first.metadata["time_limit_s"] == 1.0 and first.metadata["origin"] == "CODEFORCES"
    assert tasks[1].metadata["time_limit_s"] == 2.5 and tasks[2].difficulty == "EASY"
    for task in tasks:
        assert passes_all(task, task.solutions[0]), task.id
        assert not passes_all(task, "print(1)\n"), task.id


def _corrupt(src, dst, line, mutate):
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    mutate(rows[line - 1])
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "mutate, field, message",
    [
        (lambda r: r.update(input_output="{not json"), "input_output", "not valid JSON"),
        (
            lambda r: r.update(input_output=json.dumps({"inputs": ["1"], "outputs": []})),
            "input_output",
            "1 inputs but 0 outputs",
        ),
        (lambda r: r.pop("question"), "question", "missing"),
        (lambda r: r.update(problem_id="9002"), "problem_id", "must be an integer"),
    ],
)
def test_apps_malformed_rows_name_file_line_and_field(apps_path, tmp_path, mutate, field, message):
    bad = tmp_path / "apps.jsonl"
    _corrupt(apps_path, bad, 2, mutate)
    with pytest.raises(DataFormatError) as e:
        load_tasks(f"apps:{bad}")
    assert (e.value.where, e.value.field) == ("line 2", field)
    assert message in str(e.value) and str(bad) in str(e.value)


def test_codecontests_malformed_tests_name_the_group(codecontests_path, tmp_path):
    bad = tmp_path / "cc.jsonl"
    _corrupt(codecontests_path, bad, 3, lambda r: r["private_tests"]["output"].append("x"))
    with pytest.raises(DataFormatError) as e:
        load_tasks(f"codecontests:{bad}")
    assert (e.value.where, e.value.field) == ("line 3", "private_tests")


def test_split_comes_from_a_hugging_face_style_file_name(apps_path, tmp_path):
    (tmp_path / "test-00000-of-00001.jsonl").write_text(apps_path.read_text())
    with pytest.warns(UserWarning):
        tasks = load_tasks(f"apps:{tmp_path / 'test-00000-of-00001.jsonl'}", split="test")
    assert len(tasks) == 4 and {t.split for t in tasks} == {"test"}
