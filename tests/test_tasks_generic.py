import gzip
import json

import pytest

from pper.errors import DataFormatError, PperError
from pper.tasks import Task, load_tasks


def _all_tasks(mbpp_path, apps_path, codecontests_path):
    with pytest.warns(UserWarning):
        return (
            load_tasks("humaneval")
            + load_tasks(f"mbpp:{mbpp_path}")
            + load_tasks(f"apps:{apps_path}")
            + load_tasks(f"codecontests:{codecontests_path}")
        )


def test_every_loaded_task_round_trips_through_the_generic_jsonl_format(
    tmp_path, mbpp_path, apps_path, codecontests_path
):
    tasks = _all_tasks(mbpp_path, apps_path, codecontests_path)
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in tasks))
    again = load_tasks(f"jsonl:{path}")
    assert again == tasks
    assert {t.test_kind for t in again} == {"assert", "call", "stdio"}


def test_minimal_generic_rows_use_defaults(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"id": "add", "prompt": "Write add(a, b).", "tests": {"kind": "assert", "asserts": ["assert add(1, 2) == 3"]}},
        {
            "id": "echo",
            "prompt": "Echo stdin.",
            "split": "train",
            "difficulty": 3,
            "tests": {"kind": "stdio", "cases": [{"input": "x\n", "output": "x\n"}]},
        },
        {
            "id": "neg",
            "prompt": "Negate.",
            "tests": {"kind": "call", "fn_name": "neg", "cases": [{"args": [1], "expected": -1}]},
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # blank lines are ignored
    add, echo, neg = load_tasks(f"jsonl:{path}")
    assert add.prompt_style == "instruction" and add.source == "jsonl" and add.tests.setup == ""
    assert echo.difficulty == "3" and echo.split == "train" and neg.tests.cases[0].expected == -1
    assert [t.id for t in load_tasks(f"jsonl:{path}", split="train")] == ["echo"]


@pytest.mark.parametrize(
    "row, field, message",
    [
        (
            {"id": "a", "prompt": "p", "tests": {"kind": "assert", "asserts": ["assert 1"]}, "promt": "x"},
            "promt",
            "unknown field",
        ),
        ({"id": "a", "prompt": "p"}, "tests", "missing"),
        ({"id": "a", "prompt": "p", "tests": {"kind": "unit"}}, "tests.kind", "must be one of"),
        (
            {"id": "a", "prompt": "p", "tests": {"kind": "stdio", "cases": [{"input": "1"}]}},
            "tests.cases[0].output",
            "missing",
        ),
        (
            {
                "id": "a",
                "prompt": "p",
                "tests": {"kind": "call", "fn_name": "f", "cases": [{"args": 1, "expected": 1}]},
            },
            "tests.cases[0].args",
            "must be a list",
        ),
        ({"id": 7, "prompt": "p", "tests": {"kind": "assert", "asserts": []}}, "id", "must be a string"),
    ],
)
def test_bad_generic_rows_name_line_and_field_and_load_nothing(tmp_path, row, field, message):
    good = {"id": "ok", "prompt": "p", "tests": {"kind": "assert", "asserts": ["assert True"]}}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataFormatError) as e:
        load_tasks(f"jsonl:{path}")
    assert (e.value.where, e.value.field) == ("line 2", field)
    assert message in e.value.problem


def test_invalid_json_and_duplicate_ids_are_reported_with_their_line(tmp_path):
    row = json.dumps({"id": "a", "prompt": "p", "tests": {"kind": "assert", "asserts": ["assert 1"]}})
    path = tmp_path / "t.jsonl"
    path.write_text(row + "\n" + row[:-5] + "\n")
    with pytest.raises(DataFormatError, match=r"line 2: invalid JSON"):
        load_tasks(f"jsonl:{path}")
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(DataFormatError, match=r"line 2: field 'id': duplicate task id 'a'"):
        load_tasks(f"jsonl:{path}")


def test_gzip_json_and_parquet_files(tmp_path, apps_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in apps_path.read_text().splitlines()]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(apps_path.read_text())
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    with pytest.warns(UserWarning):
        expected = load_tasks(f"apps:{apps_path}")
    for name in ("a.jsonl.gz", "a.json", "a.parquet"):
        with pytest.warns(UserWarning):
            assert load_tasks(f"apps:{tmp_path / name}") == expected
    pq.write_table(pa.Table.from_pylist([rows[0], {**rows[1], "question": None}]), tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r"bad.parquet, row 2: field 'question': missing"):
        load_tasks(f"apps:{tmp_path / 'bad.parquet'}")


def test_source_errors_are_actionable(tmp_path):
    with pytest.raises(PperError, match="unknown task source 'humaneva'"):
        load_tasks("humaneva")
    with pytest.raises(PperError, match="mbpp: needs a file path"):
        load_tasks("mbpp")
    with pytest.raises(PperError, match="no such file"):
        load_tasks(f"mbpp:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(PperError, match="has no split information"):
        load_tasks(f"jsonl:{_one_task(tmp_path)}", split="train")
    with pytest.raises(PperError, match="no tasks in split 'train'; its splits are: test"):
        load_tasks("humaneval", split="train")


def _one_task(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(Task(id="x", prompt="p", tests=load_tasks("humaneval", limit=1)[0].tests).to_dict()))
    return path
