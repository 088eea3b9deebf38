import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pper.buffer import Execution, LineSearch, NewProgram, ReplayBuffer, program_hash
from pper.errors import PperError
from pper.execution.results import ProgramResult, TestResult
from pper.tasks import load_tasks

WRITER = Path(__file__).parent / "buffer_writer.py"


def _result(*verdicts, error=None, time=0.0):
    """A result with these verdicts; `error` is the text of the first test that did not pass."""
    first = next((i for i, v in enumerate(verdicts) if v != "passed"), None)
    return ProgramResult(tuple(TestResult(v, error if i == first else None) for i, v in enumerate(verdicts)), time)


@pytest.fixture
def buffer(tmp_path):
    b = ReplayBuffer.in_run(tmp_path / "run")
    b.add_tasks(load_tasks("humaneval", limit=3))
    yield b
    b.close()


def test_tasks_are_stored_once_and_read_back_equal(buffer):
    tasks = load_tasks("humaneval", limit=4)
    assert buffer.add_tasks(tasks) == 1
    assert buffer.tasks() == tasks and buffer.task("HumanEval/2") == tasks[2]
    assert buffer.tasks(split="test") == tasks and buffer.tasks(split="train") == []
    with pytest.raises(KeyError):
        buffer.task("HumanEval/99")


def test_the_same_program_for_the_same_task_is_stored_once(buffer):
    a = NewProgram("HumanEval/0", "def f():\n    return 1\n", -2.5, 9, "smol", 0)
    same = NewProgram("HumanEval/0", "def f():  \r\n    return 1\n\n", -1.0, 12, "teacher", 1)
    other_task = NewProgram("HumanEval/1", a.text, -2.5, 9, "smol", 0)
    ids = buffer.add_programs([a, same, other_task])
    assert ids[0] == ids[1] != ids[2]
    assert program_hash(a.text) == program_hash(same.text)
    stored = buffer.program(ids[0])
    assert (stored.text, stored.logprob, stored.num_tokens, stored.model) == (a.text, -2.5, 9, "smol")
    assert buffer.stats()["programs"] == 2


def test_a_line_search_is_stored_once_with_its_labels_and_contradictions(buffer):
    (pid,) = buffer.add_programs([NewProgram("HumanEval/0", "a = 1\nb = 2\nc = 3\n", -2.0, 9, "m")])
    search = LineSearch(pid, 2, ((3, False), (1, True), (2, False)), "model", 4, 0.5, (1, 0, 0), ((2, 1),))
    buffer.add_line_labels(search)
    buffer.add_line_labels(LineSearch(pid, 4, (), "model", 4, 0.1, (1, 1, 1)))  # labelled once: the first stays
    assert buffer.line_searches() == {pid: search} and buffer.line_labels() == {pid: [1, 0, 0]}


def test_untested_programs_are_never_replayed(buffer):
    ids = buffer.add_programs(NewProgram("HumanEval/0", f"x = {i}", -1.0, 3, "m") for i in range(4))
    assert [p.id for p in buffer.untested()] == ids
    failing = _result("passed", "wrong_answer", error="AssertionError", time=0.2)
    assert buffer.add_executions([Execution(ids[1], failing)]) == 1
    table = buffer.replay_table()
    assert table.program_id.tolist() == [ids[1]] and table.pass_rate.tolist() == [0.5]
    assert [p.id for p in buffer.untested()] == [ids[0], ids[2], ids[3]]
    p = buffer.program(ids[1])
    assert p.tested and p.verdicts == ("passed", "wrong_answer") and p.error == "AssertionError"
    assert (p.passed, p.total, p.duration) == (1, 2, 0.2)
    # a second result for the same program is ignored: the first verdict stands
    assert buffer.add_executions([Execution(ids[1], _result("passed", "passed"))]) == 0
    assert buffer.program(ids[1]).pass_rate == 0.5
    buffer.add_executions([(ids[2], _result("passed"))])  # a plain pair works too
    assert buffer.replay_table(min_pass_rate=1.0).program_id.tolist() == [ids[2]]


def test_invalid_writes_are_refused_and_leave_nothing_behind(buffer):
    good = NewProgram("HumanEval/0", "a = 1", -1.0, 2, "m")
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        buffer.add_programs([good, NewProgram("nope", "b = 1", -1.0, 2, "m")])
    assert buffer.stats()["programs"] == 0  # the whole transaction was rolled back
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        buffer.add_programs([NewProgram("HumanEval/0", "a", -1.0, 0, "m")])
    with pytest.raises(ValueError, match="logprob must be finite and <= 0"):
        buffer.add_programs([NewProgram("HumanEval/0", "a", float("nan"), 3, "m")])
    (pid,) = buffer.add_programs([good])
    with pytest.raises(ValueError, match="without tests"):
        buffer.add_executions([Execution(pid, ProgramResult(()))])
    with pytest.raises(KeyError):
        buffer.add_executions([Execution(pid + 1, _result("passed"))])


def test_stats(buffer):
    ids = buffer.add_programs(NewProgram("HumanEval/0", f"x = {i}", -1.0, 3, "m", i % 2) for i in range(5))
    buffer.add_programs([NewProgram("HumanEval/1", "y", -1.0, 3, "teacher", 1)])
    buffer.add_executions(
        [
            Execution(ids[0], _result("passed", "passed")),
            Execution(ids[1], _result("passed", "runtime_error")),
            Execution(ids[2], _result("runtime_error", "runtime_error")),
            Execution(ids[3], _result(*("passed",) * 3, "runtime_error")),
        ]
    )
    s = buffer.stats()
    assert {k: s[k] for k in ("tasks", "programs", "tested", "untested", "tasks_with_programs", "tasks_solved")} == {
        "tasks": 3,
        "programs": 6,
        "tested": 4,
        "untested": 2,
        "tasks_with_programs": 2,
        "tasks_solved": 1,
    }
    assert s["pass_rate_distribution"] == {
        "0": 1,
        "(0,0.25)": 0,
        "[0.25,0.5)": 0,
        "[0.5,0.75)": 1,
        "[0.75,1)": 1,
        "1": 1,
    }
    assert s["mean_pass_rate"] == pytest.approx((1 + 0.5 + 0 + 0.75) / 4) and s["strict_accuracy"] == 0.25
    assert s["programs_by_round"] == {"0": 3, "1": 3} and s["programs_by_model"] == {"m": 5, "teacher": 1}
    json.dumps(s)


def test_reopening_keeps_everything_and_uses_wal(tmp_path):
    path = tmp_path / "buffer.sqlite"
    with ReplayBuffer(path) as b:
        b.add_tasks(load_tasks("humaneval", limit=1))
        b.add_programs([NewProgram("HumanEval/0", "a", -1.0, 2, "m")])
    with ReplayBuffer(path) as b:
        assert b.stats()["programs"] == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_buffer_is_a_clear_error(tmp_path):
    path = tmp_path / "buffer.sqlite"
    path.write_text("this is not sqlite" * 100)
    with pytest.raises(PperError, match="not a pper replay buffer"):
        ReplayBuffer(path)


def _written(path: Path) -> tuple[int, int]:
    """(programs, executions) committed in the buffer file, as one reader's snapshot."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT (SELECT COUNT(*) FROM programs), (SELECT COUNT(*) FROM executions)").fetchone()
    finally:
        db.close()


def _kill_point(moment: int, now: tuple[int, int], start: tuple[int, int], batch: int) -> bool:
    """Whether a writer whose buffer held `start` (programs, executions) and now holds `now` is at the moment to
    kill it: 0: a new batch's programs are committed and its executions not yet (it is between or in its two
    transactions); 1: a whole new batch is written (it is into the next one); 2: as 0, two batches later."""
    programs, executions = now[0] - start[0], now[1] - start[1]
    between = programs > executions
    return (programs > 0 and between, executions >= batch, programs > 2 * batch and between)[moment]


def test_killing_a_writer_mid_transaction_leaves_the_buffer_consistent(tmp_path):
    """SIGKILL a real writer process at several moments, states of the file polled for (`_kill_point`), not
    delays; every batch is then whole or absent."""
    from buffer_writer import BATCH

    path = tmp_path / "buffer.sqlite"
    kills = 0
    for moment in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
        )
        assert proc.stdout.readline().strip() == "ready"
        start, deadline = _written(path), time.monotonic() + 300
        try:
            while not _kill_point(moment, _written(path), start, BATCH):
                assert proc.poll() is None, "the writer ended"
                assert time.monotonic() < deadline, "the writer did not get there in 300 s"
                time.sleep(0.001)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_round = db.execute("SELECT round, COUNT(*) FROM programs GROUP BY round").fetchall()
        assert per_round and all(n == BATCH for _, n in per_round)
        rounds = sorted(r for r, _ in per_round)
        assert rounds == list(range(len(rounds)))  # no batch lost in the middle
        orphans = db.execute(
            "SELECT COUNT(*) FROM executions e LEFT JOIN programs p ON p.id = e.program_id WHERE p.id IS NULL"
        ).fetchone()[0]
        assert orphans == 0
        # executions of a batch are one transaction too: a round is fully tested or not at all
        tested = db.execute(
            "SELECT p.round, COUNT(e.program_id) FROM programs p LEFT JOIN executions e ON e.program_id = p.id"
            " GROUP BY p.round"
        ).fetchall()
        assert all(n in (0, BATCH) for _, n in tested)
        db.close()
    with ReplayBuffer(path) as b:  # and the pipeline can carry on writing
        assert b.stats()["untested"] % BATCH == 0  # whole batches whose executions were never written
        b.add_programs([NewProgram("t", "after the kills", -1.0, 3, "m", 10**6)])
    assert kills == 3


def test_copy_to_is_a_consistent_copy_and_refuses_to_overwrite_unless_asked(buffer, tmp_path):
    ids = buffer.add_programs(NewProgram("HumanEval/0", f"x = {i}", -1.0, 3, "m") for i in range(3))
    buffer.add_executions([Execution(ids[0], _result("passed", "wrong_answer", error="AssertionError", time=0.2))])
    dest = tmp_path / "arm" / "buffer.sqlite"
    assert buffer.copy_to(dest) == dest
    with ReplayBuffer(dest) as copy:
        assert copy.programs() == buffer.programs() and copy.tasks() == buffer.tasks()
        copy.add_programs([NewProgram("HumanEval/1", "only in the copy", -1.0, 3, "m")])
    assert buffer.stats()["programs"] == 3  # the copy is independent of the buffer
    assert not dest.with_name(dest.name + ".tmp").exists()
    with pytest.raises(PperError, match="already exists.*overwrite=True"):
        buffer.copy_to(dest)
    with ReplayBuffer(dest) as copy:
        assert copy.stats()["programs"] == 4  # refused: untouched
    buffer.add_programs([NewProgram("HumanEval/2", "later", -1.0, 3, "m")])
    buffer.copy_to(dest, overwrite=True)
    with ReplayBuffer(dest) as copy:
        assert [p.text for p in copy.programs()] == [p.text for p in buffer.programs()]
    with pytest.raises(PperError, match="onto itself"):
        buffer.copy_to(buffer.path, overwrite=True)


def test_copy_to_takes_a_committed_state_while_another_connection_writes(tmp_path):
    """The backup API copies one committed transaction: a write left open in another process is not in it."""
    path = tmp_path / "buffer.sqlite"
    with ReplayBuffer(path) as b:
        b.add_tasks(load_tasks("humaneval", limit=1))
        b.add_programs([NewProgram("HumanEval/0", "committed", -1.0, 2, "m")])
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO programs (task_id, hash, text, logprob, num_tokens, model, round, created)"
            " VALUES ('HumanEval/0', 'h', 'uncommitted', -1, 2, 'm', 0, 0)"
        )
        b.copy_to(tmp_path / "copy.sqlite")
        other.execute("COMMIT")
        other.close()
    with ReplayBuffer(tmp_path / "copy.sqlite") as copy:
        assert [p.text for p in copy.programs()] == ["committed"]


def test_a_stored_result_reads_back_whole(buffer):
    """Every test's verdict, error text and time are kept (schema 2), not only the first error."""
    (pid,) = buffer.add_programs([NewProgram("HumanEval/0", "def f(): pass", -1.0, 3, "m")])
    result = ProgramResult(
        (
            TestResult("passed", None, 0.125),
            TestResult("wrong_answer", "assert f(1) == 2: got None", 0.25),
            TestResult("timeout", "time limit exceeded", 4.0),
        ),
        time=4.5,
    )
    buffer.add_executions([Execution(pid, result)])
    p = buffer.program(pid)
    assert p.result == result and p.tested
    assert (p.passed, p.total, p.pass_rate, p.duration) == (1, 3, 1 / 3, 4.5)
    assert p.verdicts == ("passed", "wrong_answer", "timeout") and p.error == "assert f(1) == 2: got None"
    untested = buffer.add_programs([NewProgram("HumanEval/0", "def g(): pass", -1.0, 3, "m")])[0]
    assert buffer.program(untested).result is None and buffer.program(untested).pass_rate is None


def test_add_tested_from_adds_the_tested_programs_with_their_results_once(tmp_path):
    from pper.buffer import Execution, NewProgram, ReplayBuffer
    from pper.execution.results import ProgramResult, TestResult
    from pper.tasks import load_tasks

    a, b = load_tasks("humaneval", limit=2)
    passed = ProgramResult((TestResult("passed"), TestResult("failed")))
    with ReplayBuffer(tmp_path / "src.sqlite") as source, ReplayBuffer(tmp_path / "dst.sqlite") as target:
        source.add_tasks([a, b])
        ids = source.add_programs([NewProgram(a.id, "x = 1", -1.0, 3, "m", 1, "x"),
                                   NewProgram(b.id, "y", -2.0, 1, "r")])  # fmt: skip
        source.add_executions([Execution(ids[0], passed)])  # the second is never tested: it is not added
        target.add_tasks([a])
        kept = target.add_programs([NewProgram(a.id, "x = 1", -9.0, 9, "other", 2, "x")])
        assert target.add_tested_from(source) == 0  # the one tested program is there already, and keeps its own row
        assert {t.id for t in target.tasks()} == {a.id, b.id}
        ids = source.add_programs([NewProgram(b.id, "z = 2", -0.5, 2, "m", 3)])
        source.add_executions([Execution(ids[0], passed)])
        assert target.add_tested_from(source) == 1 and target.add_tested_from(source) == 0
        new = next(p for p in target.programs() if p.text == "z = 2")
        assert (new.task_id, new.logprob, new.num_tokens, new.model, new.round) == (b.id, -0.5, 2, "m", 3)
        assert new.result == passed and target.program(kept[0]).model == "other"


def test_task_data_is_stripped_from_the_file_and_put_back_from_the_same_tasks(tmp_path, buffer):
    from pper.buffer import Group, Member

    tasks = buffer.tasks()
    reference = tasks[0].solutions[0]
    ids = buffer.add_programs(
        [
            NewProgram(tasks[0].id, reference, -3.0, 30, "references"),
            NewProgram(tasks[0].id, "def f():\n    pass", -1.0, 5, "m"),
        ]
    )
    quoted = "assert candidate([1.0, 2.8], 0.3) == True failed"  # an error text quotes its test
    buffer.add_executions([(i, _result("passed", "failed", error=quoted)) for i in ids])
    buffer.add_group(Group(tasks[1].id, "Complete: " + tasks[1].prompt, (5, 6), (Member("x = 1", (1,), (-0.1,), 0.0),)))
    before = {p.id: p for p in buffer.programs()}
    copy = buffer.copy_to(tmp_path / "copy" / "buffer.sqlite")

    with ReplayBuffer(copy) as c:
        assert c.strip_task_data() == {"tasks": 3, "references": 1, "quotes": 1, "errors": 2}
        with pytest.raises(PperError, match="stripped from this buffer"):
            c.tasks()
        assert c.program(ids[1]).text == "def f():\n    pass" and c.program(ids[0]).text == ""
        assert c.group(1).prompt == "" and c.group(1).members[0].completion == "x = 1"
        assert [t.error for t in c.program(ids[1]).result.tests] == [None, ""]  # the verdicts stay
        assert c.program(ids[1]).result.pass_rate == 0.5
    data = copy.read_bytes()
    assert b"has_close_elements" not in data and reference.encode() not in data  # not in free pages either
    assert quoted.encode() not in data
    assert not copy.with_name("buffer.sqlite-wal").exists()

    with ReplayBuffer(copy) as c:
        with pytest.raises(PperError, match="HumanEval/2 was stripped from it and is not among"):
            c.restore_task_data(tasks[:2])
        changed = [tasks[0].__class__(**{**tasks[0].__dict__, "prompt": tasks[0].prompt + " "}), *tasks[1:]]
        with pytest.raises(PperError, match="HumanEval/0 differs from the one the buffer was made with"):
            c.restore_task_data(changed)
        assert c.restore_task_data(load_tasks("humaneval", limit=5)) == {"tasks": 3, "references": 1}
        assert c.tasks() == tasks and {p.id: p.text for p in c.programs()} == {i: p.text for i, p in before.items()}
        assert [p.result.verdicts for p in c.programs()] == [p.result.verdicts for p in before.values()]
        assert c.restore_task_data(tasks) == {"tasks": 0, "references": 0}  # not stripped now
