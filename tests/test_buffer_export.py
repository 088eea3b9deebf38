import json

import pytest

from pper.buffer import EXPORT_COLUMNS, Execution, NewProgram, ReplayBuffer, to_hf_dataset, to_jsonl
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
        ]
    )
    b.add_executions([Execution(ids[0], ("passed",) * 7, 7, None, 0.5)])
    yield b
    b.close()


def test_jsonl_export_has_one_row_per_program(filled, tmp_path):
    path = tmp_path / "buffer.jsonl"
    assert to_jsonl(filled, path, alpha=0.5) == 2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(r) for r in rows] == [list(EXPORT_COLUMNS)] * 2
    tested, untested = rows
    assert tested["pass_rate"] == 1.0 and tested["verdicts"] == ["passed"] * 7 and tested["split"] == "test"
    assert tested["possibility"] == pytest.approx(0.6065306597)  # exp(-4 / 8)
    assert tested["p2value"] == pytest.approx(0.5 * 0.6065306597 + 0.5)
    assert tested["prompt"].startswith("from typing import List")
    assert untested["tested"] is False and untested["pass_rate"] is None and untested["p2value"] is None


def test_hf_dataset_export(filled, tmp_path):
    import datasets

    ds = to_hf_dataset(filled, alpha=0.0)
    assert ds.column_names == list(EXPORT_COLUMNS) and len(ds) == 2
    assert ds[0]["p2value"] == 1.0 and ds[1]["p2value"] is None
    ds.save_to_disk(tmp_path / "ds")
    assert datasets.load_from_disk(tmp_path / "ds")[0]["program"] == ds[0]["program"]
