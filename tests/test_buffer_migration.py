"""The buffer's schema version and its migrations, on a file written by pper at schema 1 (tests/data)."""

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from pper.buffer import NewProgram, Replay, ReplayBuffer, ReplayConfig, store
from pper.errors import PperError
from pper.execution.results import ProgramResult, TestResult

V1 = Path(__file__).parent / "data" / "buffer-v1.sqlite.gz"  # made by tests/data/make_buffer_v1.py at adf93d0


@pytest.fixture
def v1(tmp_path) -> Path:
    path = tmp_path / "buffer.sqlite"
    path.write_bytes(gzip.decompress(V1.read_bytes()))
    return path


def _rows(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _version(path: Path) -> int:
    return int(_rows(path, "SELECT value FROM meta WHERE key = 'schema_version'")[0][0])


def _schema(path: Path) -> dict[str, list]:
    """Every table's columns (name, type, not null, default, primary key) and every index's columns."""
    db = sqlite3.connect(path)
    try:
        names = db.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        schema = {}
        for kind, name, table in sorted(names):
            if kind == "table":
                schema[name] = [r[1:] for r in db.execute(f"PRAGMA table_info({name})")]
                schema[name + " foreign keys"] = [r[2:5] for r in db.execute(f"PRAGMA foreign_key_list({name})")]
            else:
                schema[name] = [table] + [r[2] for r in db.execute(f"PRAGMA index_info({name})")]
        return schema
    finally:
        db.close()


def test_the_fixture_is_a_schema_1_buffer(v1):
    assert _version(v1) == 1
    assert [r[1] for r in _rows(v1, "PRAGMA table_info(executions)")].count("error") == 1


def test_a_schema_1_buffer_is_migrated_and_keeps_every_row(v1):
    columns = {
        "tasks": "*",
        "samplings": "*",
        "programs": "id, task_id, hash, text, logprob, num_tokens, model, round, created",
    }
    before = {t: _rows(v1, f"SELECT {c} FROM {t} ORDER BY 1, 2") for t, c in columns.items()}
    executions = _rows(v1, "SELECT program_id, passed, total, pass_rate, verdicts, error, duration FROM executions")
    with ReplayBuffer(v1) as b:
        assert b.schema_version == store.SCHEMA_VERSION == 8
        programs = {p.id: p for p in b.programs()}
        assert all(p.prefix == "" for p in programs.values())  # schema 3: no program was given a prefix before
        assert all(p.result.executed_lines is None for p in programs.values() if p.result)  # nor has coverage
        assert b.executed_program_ids() == set()
        assert b.turns() == {} and all(b.turn(i).turn == 1 for i in programs)  # schema 4: no repair turns before
        assert b.group_count() == 0  # schema 5: no online-RL groups before
        assert b.line_labels() == {} and b.line_searches() == {} and b.prm_scores() == {}  # schema 6: no PRM data
        assert len(programs) == 7 and [p.id for p in b.untested()] == [7]
        assert len(b.tasks()) == 5 and b.sampled_tasks("smollm2", 0) == {"mbpp/1", "mbpp/2"}
    for table, rows in before.items():
        assert _rows(v1, f"SELECT {columns[table]} FROM {table} ORDER BY 1, 2") == rows, table
    assert len(executions) == 6
    for program_id, passed, total, pass_rate, verdicts, error, duration in executions:
        p = programs[program_id]
        assert (p.passed, p.total, p.pass_rate, p.duration) == (passed, total, pass_rate, duration)
        assert list(p.verdicts) == json.loads(verdicts) and p.error == error
        assert [t.time for t in p.result.tests] == [0.0] * total  # per-test times were not recorded in schema 1
    # the first error text went to the first test that did not pass
    assert programs[4].result.tests == (
        TestResult("passed"),
        TestResult("passed"),
        TestResult("wrong_answer", "AssertionError"),
    )
    assert programs[5].result.tests[0].error == "expected '3', got '1 2'" and programs[5].result.tests[1].error is None


def test_a_migrated_buffer_has_the_schema_of_a_new_one(v1, tmp_path):
    with ReplayBuffer(v1), ReplayBuffer(tmp_path / "new.sqlite"):
        pass
    assert _schema(v1) == _schema(tmp_path / "new.sqlite")


def test_a_migrated_buffer_works_for_replay_and_new_writes(v1):
    with ReplayBuffer(v1) as b:
        table = b.replay_table()
        assert table.program_id.tolist() == [1, 2, 3, 4, 5, 6]
        assert table.pass_rate.tolist() == pytest.approx([1, 0, 0, 2 / 3, 0.5, 1])
        draws = Replay(table, ReplayConfig(priority="rank"), seed=0).sample(100)
        assert {d.program_id for d in draws} <= set(range(1, 7))
        (pid,) = b.add_programs([NewProgram("mbpp/3", "def similar_elements(a, b):\n    pass\n", -1.0, 9, "m", 2)])
        result = ProgramResult((TestResult("passed", None, 0.5), TestResult("runtime_error", "NameError: x", 0.25)))
        assert b.add_executions([(pid, result)]) == 1
        assert b.program(pid).result == result
    with ReplayBuffer(v1) as b:  # reopening a migrated buffer changes nothing
        assert b.schema_version == store.SCHEMA_VERSION and len(b.programs()) == 8


def test_a_migration_that_fails_midway_leaves_the_file_as_it_was(v1, monkeypatch):
    """Each step is one transaction: an error after the step changed the file rolls the whole step back."""
    real = store.MIGRATIONS[0]

    def killed_midway(db):
        real(db)  # the tables are rebuilt, the rows copied ...
        raise RuntimeError("killed before the step committed")

    monkeypatch.setattr(store, "MIGRATIONS", (killed_midway, *store.MIGRATIONS[1:]))
    original = _schema(v1), _rows(v1, "SELECT * FROM executions ORDER BY 1")
    with pytest.raises(RuntimeError, match="killed before"):
        ReplayBuffer(v1)
    assert _version(v1) == 1 and (_schema(v1), _rows(v1, "SELECT * FROM executions ORDER BY 1")) == original
    assert _rows(v1, "PRAGMA integrity_check") == [("ok",)]
    monkeypatch.undo()
    with ReplayBuffer(v1) as b:  # the next open migrates it
        assert b.schema_version == store.SCHEMA_VERSION and len(b.replay_table()) == 6


def test_every_schema_version_after_the_first_has_a_migration_step():
    assert len(store.MIGRATIONS) == store.SCHEMA_VERSION - 1


def test_a_buffer_from_a_newer_pper_is_refused(tmp_path):
    path = tmp_path / "buffer.sqlite"
    with ReplayBuffer(path):
        pass
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(PperError, match="newer pper.*schema 99.*upgrade pper"):
        ReplayBuffer(path)


def test_a_sqlite_file_without_a_schema_version_is_not_a_buffer(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE things (x)")
    db.commit()
    db.close()
    with pytest.raises(PperError, match="not a pper replay buffer"):
        ReplayBuffer(path)


def test_reading_an_older_buffer_leaves_the_file_as_it_was(v1):
    before = v1.read_bytes()
    with ReplayBuffer.reading(v1) as buffer:
        assert buffer.schema_version == store.SCHEMA_VERSION  # a migrated copy
        assert len(buffer.programs()) == _rows(v1, "SELECT COUNT(*) FROM programs")[0][0] > 0
        copy = buffer.path
    assert _version(v1) == 1 and v1.read_bytes() == before and not copy.exists()  # the copy is gone
    with ReplayBuffer(v1) as migrated:  # migrated in place by a plain open; then read in place
        assert migrated.schema_version == store.SCHEMA_VERSION
    with ReplayBuffer.reading(v1) as buffer:
        assert buffer.path == v1
    with pytest.raises(PperError, match="no replay buffer there"):
        with ReplayBuffer.reading(v1.with_name("none.sqlite")):
            pass
