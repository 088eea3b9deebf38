import json
from collections import Counter

import pytest

from pper.errors import DataFormatError
from pper.tasks import AssertTests, load_tasks
from pper.tasks.mbpp import parse_mbpp
from reference_runner import assert_results


def test_original_file_splits_by_task_id(mbpp_path):
    tasks = load_tasks(f"mbpp:{mbpp_path}")
    assert len(tasks) == 974
    assert Counter(t.split for t in tasks) == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    test = load_tasks(f"mbpp:{mbpp_path}", split="test")
    assert len(test) == 500 and test[0].id == "mbpp/11" and test[-1].id == "mbpp/510"
    assert [t.id for t in load_tasks(f"mbpp:{mbpp_path}", split="train", limit=2)] == ["mbpp/601", "mbpp/602"]


def test_every_entry_point_is_defined_by_its_reference_solution(mbpp_path):
    for t in load_tasks(f"mbpp:{mbpp_path}"):
        assert f"def {t.entry_point}" in t.solutions[0] or f"class {t.entry_point}" in t.solutions[0], t.id


def test_reference_solutions_pass_their_tests(mbpp_path):
    tasks = [t for t in load_tasks(f"mbpp:{mbpp_path}", split="validation")]
    results = assert_results([(t.solutions[0], t.tests) for t in tasks])
    assert all(p == n == 3 for p, n in results)


def test_setup_code_and_challenge_tests_are_kept(mbpp_path):
    rows = [json.loads(line) for line in mbpp_path.read_text().splitlines()]
    with_setup = next(r for r in rows if r["test_setup_code"])
    task = parse_mbpp(with_setup)
    assert isinstance(task.tests, AssertTests)
    assert task.tests.setup == with_setup["test_setup_code"].replace("\r\n", "\n")
    with_challenge = next(r for r in rows if r["challenge_test_list"])
    assert parse_mbpp(with_challenge).metadata["challenge_test_list"] == with_challenge["challenge_test_list"]


def test_hugging_face_sanitized_rows(mbpp_path, tmp_path):
    """The HF `mbpp` "sanitized" config names the problem `prompt` and the imports `test_imports`."""
    rows = [json.loads(line) for line in mbpp_path.read_text().splitlines()][10:13]
    sanitized = tmp_path / "test.jsonl"
    sanitized.write_text(
        "".join(
            json.dumps(
                {
                    "source_file": "x.py",
                    "task_id": r["task_id"],
                    "prompt": r["text"],
                    "code": r["code"],
                    "test_imports": ["import math"],
                    "test_list": r["test_list"],
                }
            )
            + "\n"
            for r in rows
        )
    )
    tasks = load_tasks(f"mbpp:{sanitized}")
    assert [t.id for t in tasks] == ["mbpp/11", "mbpp/12", "mbpp/13"]
    assert tasks[0].tests.setup == "import math" and tasks[0].prompt == rows[0]["text"]
    assert all(p == n for p, n in assert_results([(t.solutions[0], t.tests) for t in tasks]))


def test_malformed_row_names_file_line_and_field(mbpp_path, tmp_path):
    lines = mbpp_path.read_text().splitlines()[:5]
    bad = json.loads(lines[3])
    bad["test_list"] = "assert f(1) == 1"
    lines[3] = json.dumps(bad)
    path = tmp_path / "mbpp.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as e:
        load_tasks(f"mbpp:{path}")
    assert e.value.where == "line 4" and e.value.field == "test_list"
    assert str(path) in str(e.value) and "must be a list" in str(e.value)
