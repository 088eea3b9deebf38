import json

import pytest

from pper.buffer import EXPORT_COLUMNS, NewProgram, ReplayBuffer, to_hf_dataset, to_jsonl
from pper.execution.results import ProgramResult, TestResult
from pper.tasks import load_tasks


@pytest.fixture
def filled(tmp_path):
    b = ReplayBuffer(tmp_path / "buffer.sqlite")
    tasks = load_tasks("humaneval", limit=2)
    b.add_tasks(tasks)
    ids = b.add_programs(
        [
            NewProgram(tasks[0].id, tasks[0].solutions[0], -4.0, 8, "smol", 0),
            NewProgram(tasks[1].id, "def bad(): pass", -9.0, 6, "smol", 1),
            NewProgram(tasks[1].id, "def bad(): return 0", -9.0, 6, "smol", 1),
        ]
    )
    failing = (TestResult("passed", None, 0.01), TestResult("wrong_answer", "assert 0 == 1", 0.02))
    cut = ProgramResult(failing, 0.1, executed_lines=(1,), coverage_complete=False)  # tracing cut short
    b.add_executions([(ids[0], ProgramResult((TestResult("passed"),) * 7, 0.5)), (ids[2], cut)])
    yield b
    b.close()


def test_jsonl_export_has_one_row_per_program(filled, tmp_path):
    path = tmp_path / "buffer.jsonl"
    assert to_jsonl(filled, path, alpha=0.5) == 3
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(r) for r in rows] == [list(EXPORT_COLUMNS)] * 3
    tested, untested, failing = rows
    assert tested["pass_rate"] == 1.0 and tested["verdicts"] == ["passed"] * 7 and tested["split"] == "test"
    assert tested["possibility"] == pytest.approx(0.6065306597)  # exp(-4 / 8)
    assert tested["p2value"] == pytest.approx(0.5 * 0.6065306597 + 0.5)
    assert tested["prompt"].startswith("from typing import List")
    assert untested["tested"] is False and untested["pass_rate"] is None and untested["p2value"] is None
    assert untested["errors"] is None and untested["times"] is None
    assert failing["errors"] == [None, "assert 0 == 1"] and failing["error"] == "assert 0 == 1"
    assert failing["times"] == [0.01, 0.02] and failing["duration"] == 0.1
    assert (failing["executed_lines"], failing["coverage_complete"]) == ([1], False)
    assert (tested["executed_lines"], tested["coverage_complete"]) == (None, None)  # no coverage collected


def test_hf_dataset_export(filled, tmp_path):
    import datasets

    ds = to_hf_dataset(filled, alpha=0.0)
    assert ds.column_names == list(EXPORT_COLUMNS) and len(ds) == 3
    assert ds[0]["p2value"] == 1.0 and ds[1]["p2value"] is None
    assert ds[2]["errors"] == [None, "assert 0 == 1"] and ds[2]["times"] == [0.01, 0.02]
    assert ds[2]["coverage_complete"] is False and ds[0]["coverage_complete"] is None
    ds.save_to_disk(tmp_path / "ds")
    assert datasets.load_from_disk(tmp_path / "ds")[0]["program"] == ds[0]["program"]
