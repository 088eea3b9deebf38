"""`hf:` sources run through `datasets.load_dataset`, here on local dataset folders (no hub access)."""

import json
from dataclasses import replace

import pytest

from pper.errors import PperError
from pper.tasks import load_tasks


def test_apps_dataset_folder_with_splits(tmp_path, apps_path):
    folder = tmp_path / "apps"
    folder.mkdir()
    lines = apps_path.read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(lines[2:]) + "\n")
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        everything = load_tasks(f"hf:{folder}")
    assert {(t.id, t.split) for t in everything} == {
        ("apps/9001", "train"),
        ("apps/9002", "train"),
        ("apps/9003", "test"),
        ("apps/9004", "test"),
    }
    with pytest.warns(UserWarning):
        test = load_tasks(f"hf:{folder}", split="test")
    with pytest.warns(UserWarning):
        local = load_tasks(f"apps:{apps_path}")
    assert test == [replace(t, split="test") for t in local if t.id in {"apps/9003", "apps/9004"}]


def test_mbpp_and_codecontests_rows_are_detected(tmp_path, mbpp_path, codecontests_path):
    mbpp = tmp_path / "mbpp"
    mbpp.mkdir()
    rows = mbpp_path.read_text().splitlines()
    (mbpp / "test.jsonl").write_text("\n".join(rows[10:15]) + "\n")
    tasks = load_tasks(f"hf:{mbpp}", split="test")
    assert [t.id for t in tasks] == [f"mbpp/{i}" for i in range(11, 16)]
    assert tasks == load_tasks(f"mbpp:{mbpp_path}", split="test", limit=5)

    cc = tmp_path / "cc"
    cc.mkdir()
    (cc / "valid.jsonl").write_text(codecontests_path.read_text())
    with pytest.warns(UserWarning):
        tasks = load_tasks(f"hf:{cc}", split="validation")  # datasets names valid.jsonl so
    assert len(tasks) == 3 and tasks[0].tests.cases[0].group == "public"


def test_unknown_dataset_and_unknown_columns_are_clear_errors(tmp_path):
    with pytest.raises(PperError, match="could not load Hugging Face dataset 'no-such/dataset-pper'"):
        load_tasks("hf:no-such/dataset-pper")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(PperError, match="cannot tell the row format"):
        load_tasks(f"hf:{odd}")
