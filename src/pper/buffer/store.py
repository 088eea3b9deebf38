"""The replay buffer: a SQLite file (WAL) of tasks, programs and their executions.

Every write is one transaction, so a process killed in the middle of a write leaves the buffer as it
was before that write or after it, never in between. The same program for the same task is stored once
(programs are keyed by task and a hash of their normalised text).

The file's schema has a version (`SCHEMA_VERSION`, in the `meta` table). A buffer written by an older pper is
migrated when it is opened, one version at a time, each step one transaction (`MIGRATIONS`); a buffer written by
a newer pper is refused. A change of the schema appends a step to `MIGRATIONS` and changes `_SCHEMA`, the schema
of a new file, to match (tests/test_buffer_migration.py checks that a migrated file and a new one agree).

An execution is stored as the `ProgramResult` the sandbox returned (`pper.execution.results`, stdlib only): every
test's verdict, error text and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import PperError
from ..execution.results import PASSED, ProgramResult, TestResult
from ..tasks import Task
from ..tasks.rows import RowError

SCHEMA_VERSION = 8
BUFFER_FILE = "buffer.sqlite"
STRIPPED = "task_data_stripped"  # meta key: JSON {"references": [program ids]} while the task data is out

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    split TEXT,
    data TEXT NOT NULL               -- the Task in pper's generic JSON format
);
CREATE TABLE programs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(id),
    hash TEXT NOT NULL,              -- sha256 of the normalised text
    text TEXT NOT NULL,
    logprob REAL NOT NULL,           -- log P(t): sum of the token log-probabilities
    num_tokens INTEGER NOT NULL CHECK (num_tokens >= 1),
    model TEXT NOT NULL,
    round INTEGER NOT NULL,
    created REAL NOT NULL,
    prefix TEXT NOT NULL DEFAULT '', -- the start of the program the model was given (a curriculum stage)
    UNIQUE (task_id, hash)
);
CREATE TABLE executions (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),
    passed INTEGER NOT NULL,
    total INTEGER NOT NULL CHECK (total >= 1 AND passed BETWEEN 0 AND total),
    pass_rate REAL NOT NULL,
    verdicts TEXT NOT NULL,          -- JSON list, one verdict per test
    errors TEXT NOT NULL,            -- JSON list, one error text (or null) per test
    times TEXT NOT NULL,             -- JSON list, one wall time in seconds per test
    duration REAL NOT NULL,          -- the program's whole run, in seconds
    created REAL NOT NULL,
    coverage TEXT                    -- JSON {"lines", "tests", "complete"} (lines that ran), or NULL
);
CREATE INDEX programs_by_task ON programs(task_id);
CREATE TABLE samplings (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    model TEXT NOT NULL,
    round INTEGER NOT NULL,
    candidates INTEGER NOT NULL,     -- programs the sampler returned (before deduplication)
    created REAL NOT NULL,
    PRIMARY KEY (task_id, model, round)
);
CREATE TABLE stages (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    round INTEGER NOT NULL,          -- the round sampled at this stage
    stage INTEGER NOT NULL,          -- the curriculum stage (pper.curriculum)
    PRIMARY KEY (task_id, round)
);
CREATE TABLE public_results (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),
    passed INTEGER NOT NULL,
    total INTEGER NOT NULL CHECK (total >= 1 AND passed BETWEEN 0 AND total),
    feedback TEXT                    -- what a repair turn tells the model, NULL when every public test passed
);
CREATE TABLE trajectories (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),  -- the program a repair turn wrote
    task_id TEXT NOT NULL REFERENCES tasks(id),
    root_id INTEGER NOT NULL REFERENCES programs(id),        -- the trajectory's first program (turn 1)
    turn INTEGER NOT NULL CHECK (turn >= 2),
    parent_id INTEGER NOT NULL REFERENCES programs(id),      -- the program of the turn before
    feedback TEXT NOT NULL,                                  -- what the model was told about the parent
    messages TEXT NOT NULL,                                  -- JSON: the chat the model answered
    answer TEXT NOT NULL                                     -- the answer it is trained to give: the program, fenced
);
CREATE INDEX trajectories_by_parent ON trajectories(parent_id);
CREATE TABLE groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(id),
    step INTEGER NOT NULL,           -- the online-RL step that sampled it
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    prompt_ids TEXT NOT NULL,        -- JSON: the prompt's token ids
    size INTEGER NOT NULL CHECK (size >= 1),
    mean_reward REAL NOT NULL,
    reward_std REAL NOT NULL,        -- population std of the rewards, 0 when they all tie
    mean_possibility REAL NOT NULL,  -- mean over the completions of P(t), their geometric-mean token probability
    created REAL NOT NULL
);
CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES groups(id),
    position INTEGER NOT NULL,
    completion TEXT NOT NULL,
    completion_ids TEXT NOT NULL,    -- JSON: the completion's token ids
    logps TEXT NOT NULL,             -- JSON: the sampling policy's log-probability of each of them
    reward REAL NOT NULL,
    PRIMARY KEY (group_id, position)
);
CREATE TABLE line_searches (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),
    first_bad INTEGER NOT NULL,      -- the first line from which no completion passed (lines + 1: none)
    probes TEXT NOT NULL,            -- JSON: [[prefix lines, completable], ...] in the order probed
    completer TEXT NOT NULL,         -- what completed the prefixes: reference, model, reference+model
    completions INTEGER NOT NULL,    -- sampled completions per probe (0: the reference's only)
    seconds REAL NOT NULL,
    created REAL NOT NULL,
    contradictions TEXT NOT NULL DEFAULT '[]'  -- JSON: [[j, j'], ...]: c(j) probed false, yet a passing
                                               -- completion of the prefix j' kept the program's first j lines
);
CREATE TABLE line_labels (
    program_id INTEGER NOT NULL REFERENCES line_searches(program_id),
    line INTEGER NOT NULL CHECK (line >= 1),
    label INTEGER NOT NULL CHECK (label IN (0, 1)),  -- 1: the program's first `line` lines can still pass
    PRIMARY KEY (program_id, line)
);
CREATE TABLE prm_scores (
    prm TEXT NOT NULL,               -- the PRM that scored (`pper prm train`'s id)
    program_id INTEGER NOT NULL REFERENCES programs(id),
    line INTEGER NOT NULL CHECK (line >= 1),
    score REAL NOT NULL,             -- the PRM's probability that the line is good
    PRIMARY KEY (prm, program_id, line)
);
CREATE TABLE sampled_programs (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    model TEXT NOT NULL,
    round INTEGER NOT NULL,
    program_id INTEGER NOT NULL REFERENCES programs(id),
    count INTEGER NOT NULL CHECK (count >= 1),  -- how many of the round's candidates were this program
    PRIMARY KEY (model, round, program_id)
);
"""


def program_hash(text: str, prefix: str = "", context: str = "") -> str:
    """Hash of a program with line endings and trailing whitespace normalised; a program written after a
    `prefix` it was given hashes apart from the same text written whole (and from other prefixes), and so does
    one written in a repair turn's conversation (`context`: its messages as JSON) from the same text elsewhere."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    digest = hashlib.sha256("\n".join(lines).strip("\n").encode())
    if prefix:
        digest.update(b"\0prefix\0" + prefix.encode())
    if context:
        digest.update(b"\0context\0" + context.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class NewProgram:
    """A candidate program t for task X with its sequence log-probability under the producing model.

    `prefix`: where the model was given the program's start (a curriculum stage), that start (after the task's
    own code prompt, for a completion task); `text` is the whole program, prefix and completion included, and
    `logprob`/`num_tokens` cover the completion only."""

    task_id: str
    text: str
    logprob: float
    num_tokens: int
    model: str
    round: int = 0
    prefix: str = ""


class Repair(NamedTuple):
    """A program written in a repair turn: what `ReplayBuffer.add_repairs` takes. `parent_id`: the program it
    repairs; `feedback`: what the model was told about the parent; `messages`: the chat it answered; `answer`: the
    assistant message it stands for (the program in a ```python block, as training replays it)."""

    program: NewProgram
    parent_id: int
    feedback: str
    messages: tuple[dict[str, str], ...]
    answer: str


@dataclass(frozen=True)
class Turn:
    """Where a stored program sits in a repair trajectory: `turn` 1 is a first attempt (no parent)."""

    program_id: int
    turn: int
    root_id: int
    parent_id: int | None = None
    feedback: str | None = None
    messages: tuple[dict[str, str], ...] = ()
    answer: str | None = None


@dataclass(frozen=True)
class LineSearch:
    """A program's line labels and how they were found (`pper.prm.search`): `first_bad` (its line count + 1 when
    every line is good), the probes (prefix lines, completable) in order, the completer, the sampled completions
    per probe, the seconds it took, `labels`, one per line, and `contradictions` of the monotonicity the search
    assumes (`pper.prm.search.contradictions`)."""

    program_id: int
    first_bad: int
    probes: tuple[tuple[int, bool], ...]
    completer: str
    completions: int
    seconds: float
    labels: tuple[int, ...]
    contradictions: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Member:
    """One completion of an online-RL group: its text, token ids, the sampling policy's log-probability of each
    token, and its reward."""

    completion: str
    completion_ids: tuple[int, ...]
    logps: tuple[float, ...]
    reward: float


@dataclass(frozen=True)
class Group:
    """A GRPO group: one prompt of a task and its completions (`ReplayBuffer.add_group`, `group`)."""

    task_id: str
    prompt: str
    prompt_ids: tuple[int, ...]
    members: tuple[Member, ...]
    step: int = 0
    model: str = ""
    id: int | None = None

    @property
    def rewards(self) -> np.ndarray:
        return np.array([m.reward for m in self.members], dtype=np.float64)

    @property
    def possibility(self) -> float:
        """Mean over the completions with tokens of P(t) = exp(mean token log-probability)
        (`buffer.priority.possibility`); 0 when none has a token (every completion masked out)."""
        scored = [float(np.exp(np.mean(m.logps))) for m in self.members if m.logps]
        return float(np.mean(scored)) if scored else 0.0


class Execution(NamedTuple):
    """A stored program's result on its task's tests: what `ReplayBuffer.add_executions` takes."""

    program_id: int
    result: ProgramResult


@dataclass(frozen=True)
class Program:
    """A stored program with its result, once it has been tested (`result` is None before). `turn`: its turn in
    a repair trajectory (1: a first attempt); `messages`: for a repair, the chat it answered."""

    id: int
    task_id: str
    text: str
    logprob: float
    num_tokens: int
    model: str
    round: int
    result: ProgramResult | None
    prefix: str = ""
    turn: int = 1
    messages: tuple[dict[str, str], ...] = ()

    @property
    def tested(self) -> bool:
        return self.result is not None

    @property
    def pass_rate(self) -> float | None:
        return self.result.pass_rate if self.result else None

    @property
    def passed(self) -> int | None:
        """How many tests passed."""
        return self.result.passed if self.result else None

    @property
    def total(self) -> int | None:
        return self.result.total if self.result else None

    @property
    def verdicts(self) -> tuple[str, ...] | None:
        return self.result.verdicts if self.result else None

    @property
    def error(self) -> str | None:
        """The first error text of a test that did not pass."""
        return self.result.error if self.result else None

    @property
    def duration(self) -> float | None:
        return self.result.time if self.result else None


@dataclass(frozen=True)
class ReplayTable:
    """Column arrays of the tested programs, the input of prioritized replay."""

    program_id: np.ndarray
    task_id: np.ndarray
    logprob: np.ndarray
    num_tokens: np.ndarray
    pass_rate: np.ndarray
    prm_score: np.ndarray | None = None  # the mean PRM line score of each program (NaN: not scored)

    def __len__(self) -> int:
        return int(self.program_id.size)


class ReplayBuffer:
    """The replay buffer of one run. Open with `ReplayBuffer(path)` or `ReplayBuffer.in_run(run_dir)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            raise PperError(f"{self.path}: not a pper replay buffer ({e})") from None
        # WAL + NORMAL: a committed write survives the process being killed (not a power cut).
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._open_schema()
        except BaseException:
            self._db.close()
            raise
        self._db.execute("PRAGMA foreign_keys=ON")  # off while migrating: a step may rebuild a table

    def _open_schema(self) -> None:
        """Create the schema in a new file, or migrate an older one to `SCHEMA_VERSION`, step by step."""
        while True:
            with self._write():  # re-read inside the transaction: another process may have migrated
                version = self._version()
                if version == SCHEMA_VERSION:
                    return
                if version > SCHEMA_VERSION:
                    raise PperError(
                        f"{self.path} was written by a newer pper (buffer schema {version}, this pper reads up to "
                        f"{SCHEMA_VERSION}); upgrade pper"
                    )
                if version == 0:
                    _execute_script(self._db, _SCHEMA)
                    version = SCHEMA_VERSION
                else:
                    MIGRATIONS[version - 1](self._db)
                    version += 1
                    if self._db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                        raise PperError(f"{self.path}: migrating to buffer schema {version} broke a reference")
                self._set_meta("schema_version", str(version))

    def _version(self) -> int:
        """The file's schema version; 0 for a new (empty) file."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return 0
        version = self._meta("schema_version") if "meta" in tables else None
        if version is None or not version.isdigit():
            raise PperError(f"{self.path}: not a pper replay buffer (no schema version)")
        return int(version)

    @property
    def schema_version(self) -> int:
        return int(self._meta("schema_version"))

    @classmethod
    def in_run(cls, run_dir: str | Path) -> ReplayBuffer:
        return cls(Path(run_dir) / BUFFER_FILE)

    @classmethod
    @contextmanager
    def reading(cls, path: str | Path) -> Iterator[ReplayBuffer]:
        """The buffer at `path` to read, never migrated in place: one written by an older pper (which may still be
        writing it) is read from a migrated copy in a temporary directory. For reports on other runs' buffers."""
        path = Path(path)
        if not path.is_file():
            raise PperError(f"{path}: no replay buffer there")
        copy = None
        with closing(sqlite3.connect(path, timeout=60)) as source:
            has_meta = source.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
            row = source.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() if has_meta else None
            if row is not None and str(row[0]).isdigit() and int(row[0]) < SCHEMA_VERSION:
                copy = tempfile.TemporaryDirectory(prefix="pper-buffer-")
                with closing(sqlite3.connect(Path(copy.name) / BUFFER_FILE)) as target:
                    source.backup(target)  # a consistent snapshot, even while another process writes
        try:  # current, newer or not a buffer at all: opened in place (the open refuses the last two)
            with cls(Path(copy.name) / BUFFER_FILE if copy else path) as buffer:
                yield buffer
        finally:
            if copy is not None:
                copy.cleanup()

    def close(self) -> None:
        self._db.close()

    def add_tested_from(self, source: ReplayBuffer) -> int:
        """Add `source`'s tasks and tested programs, with their results, to this buffer; how many programs were new.
        A program this buffer holds already keeps its own row, and its own result where it has one. Repair turns
        come as first attempts (their trajectories are not carried), curriculum programs with their prefix."""
        self.add_tasks(source.tasks())
        tested = [p for p in source.programs() if p.result is not None]
        before = self._count("programs")
        ids = self.add_programs(NewProgram(p.task_id, p.text, p.logprob, p.num_tokens, p.model, p.round, p.prefix)
                                for p in tested)  # fmt: skip
        self.add_executions(Execution(i, p.result) for i, p in zip(ids, tested, strict=True))
        return self._count("programs") - before

    def copy_to(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a consistent copy of the buffer to `path` with SQLite's backup API; returns `path`.

        The copy is the buffer as of one committed transaction, even while another connection writes. It is
        made beside `path` and renamed over it, so a killed copy never leaves a half-written buffer under
        `path`. An existing `path` is refused unless `overwrite`; the buffer's own file always is. Nothing may
        have the file at `path` open while it is overwritten.
        """
        dest = Path(path)
        if dest.exists():
            if os.path.samefile(dest, self.path):
                raise PperError(f"cannot copy the buffer {self.path} onto itself")
            if not overwrite:
                raise PperError(f"{dest} already exists; remove it or pass overwrite=True to replace it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        _remove_database(tmp)  # a copy killed earlier
        target = sqlite3.connect(tmp)
        try:
            self._db.backup(target)
        except BaseException:
            target.close()
            _remove_database(tmp)
            raise
        target.close()  # the last connection: checkpoints and removes tmp's WAL
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _remove_database(dest, keep_main=True)  # an old WAL beside `dest` would be replayed into the copy
        os.replace(tmp, dest)
        return dest

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- metadata ------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- tasks ---------------------------------------------------------------------------------

    def add_tasks(self, tasks: Iterable[Task]) -> int:
        """Store tasks not stored yet; returns how many were new. A stored task is never changed."""
        rows = [(t.id, t.split, json.dumps(t.to_dict())) for t in tasks]
        with self._write():
            before = self._count("tasks")
            self._db.executemany("INSERT OR IGNORE INTO tasks (id, split, data) VALUES (?, ?, ?)", rows)
            return self._count("tasks") - before

    def task(self, task_id: str) -> Task:
        row = self._db.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise KeyError(task_id)
        return _task(row[0])

    def tasks(self, split: str | None = None) -> list[Task]:
        if split is None:
            rows = self._db.execute("SELECT data FROM tasks ORDER BY rowid")
        else:
            rows = self._db.execute("SELECT data FROM tasks WHERE split = ? ORDER BY rowid", (split,))
        return [_task(r[0]) for r in rows]

    # -- programs ------------------------------------------------------------------------------

    def add_programs(self, programs: Iterable[NewProgram]) -> list[int]:
        """Store programs in one transaction; returns their ids (the stored id for a duplicate)."""
        with self._write():
            return self._insert_programs(list(programs))

    def _insert_programs(self, programs: list[NewProgram], contexts: list[str] | None = None) -> list[int]:
        for p in programs:
            if p.num_tokens < 1:
                raise ValueError(f"program for {p.task_id}: num_tokens must be >= 1, got {p.num_tokens}")
            if not np.isfinite(p.logprob) or p.logprob > 1e-6:
                raise ValueError(f"program for {p.task_id}: logprob must be finite and <= 0, got {p.logprob}")
        now = time.time()
        ids = []
        for p, context in zip(programs, contexts or [""] * len(programs), strict=True):
            if p.prefix not in p.text:
                raise ValueError(f"program for {p.task_id}: the text must contain the prefix it was given")
            digest = program_hash(p.text, p.prefix, context)
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO programs"
                    " (task_id, hash, text, logprob, num_tokens, model, round, created, prefix)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.task_id, digest, p.text, min(p.logprob, 0.0), p.num_tokens, p.model, p.round, now, p.prefix),
                )
            except sqlite3.IntegrityError:
                raise KeyError(f"program for unknown task {p.task_id!r}: add the task first") from None
            row = self._db.execute(
                "SELECT id FROM programs WHERE task_id = ? AND hash = ?", (p.task_id, digest)
            ).fetchone()
            ids.append(row[0])
        return ids

    def add_sampled(self, task_id: str, model: str, round: int, programs: list[NewProgram]) -> list[int]:
        """Store one task's candidates and record the task as sampled by `model` in `round` (and each program
        it sampled, with how many of the candidates it was: `round_samples`), in one transaction: a run killed
        midway re-samples exactly the tasks it had not finished."""
        with self._write():
            ids = self._insert_programs(programs)
            self._db.execute(
                "INSERT OR REPLACE INTO samplings (task_id, model, round, candidates, created) VALUES (?, ?, ?, ?, ?)",
                (task_id, model, round, len(programs), time.time()),
            )
            counts = Counter(ids)
            self._db.executemany(
                "INSERT OR REPLACE INTO sampled_programs (task_id, model, round, program_id, count)"
                " VALUES (?, ?, ?, ?, ?)",
                [(task_id, model, round, i, n) for i, n in counts.items()],
            )
        return ids

    def round_samples(self, task_id: str, round: int) -> list[tuple[Program, int]]:
        """The programs sampled for `task_id` in `round` (by any model), each with how many candidates it was,
        whatever round first stored it; empty where the round recorded none (or before pper recorded them)."""
        rows = self._db.execute(
            "SELECT program_id, SUM(count) FROM sampled_programs WHERE task_id = ? AND round = ?"
            " GROUP BY program_id ORDER BY program_id",
            (task_id, round),
        ).fetchall()
        return [(self.program(pid), int(n)) for pid, n in rows]

    def sampled_tasks(self, model: str, round: int) -> set[str]:
        """Tasks `model` has sampled in `round`."""
        rows = self._db.execute("SELECT task_id FROM samplings WHERE model = ? AND round = ?", (model, round))
        return {r[0] for r in rows}

    def untested(self, limit: int | None = None) -> list[Program]:
        """Programs without an execution, oldest first."""
        sql = _PROGRAMS + " WHERE e.program_id IS NULL ORDER BY p.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_program(r) for r in self._db.execute(sql)]

    def programs(self, task_id: str | None = None) -> list[Program]:
        """Stored programs (all, or one task's), in insertion order."""
        if task_id is None:
            rows = self._db.execute(_PROGRAMS + " ORDER BY p.id")
        else:
            rows = self._db.execute(_PROGRAMS + " WHERE p.task_id = ? ORDER BY p.id", (task_id,))
        return [_program(r) for r in rows]

    def program(self, program_id: int) -> Program:
        row = self._db.execute(_PROGRAMS + " WHERE p.id = ?", (program_id,)).fetchone()
        if row is None:
            raise KeyError(program_id)
        return _program(row)

    # -- executions ----------------------------------------------------------------------------

    def add_executions(self, executions: Iterable[Execution | tuple[int, ProgramResult]]) -> int:
        """Store (program id, `ProgramResult`) pairs in one transaction; a program already tested keeps its
        first result. Returns how many were new.
        """
        now = time.time()
        rows = []
        for program_id, result in executions:
            if result.total < 1:
                raise ValueError(f"program {program_id}: a result without tests cannot be stored")
            tests = result.tests
            rows.append(
                (
                    program_id,
                    result.passed,
                    result.total,
                    result.pass_rate,
                    json.dumps([t.verdict for t in tests]),
                    json.dumps([t.error for t in tests]),
                    json.dumps([t.time for t in tests]),
                    result.time,
                    now,
                    _coverage_json(result),
                )
            )
        with self._write():
            before = self._count("executions")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO executions"
                    " (program_id, passed, total, pass_rate, verdicts, errors, times, duration, created, coverage)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError:
                raise KeyError("execution for a program that is not in the buffer") from None
            return self._count("executions") - before

    def executed_program_ids(self) -> set[int]:
        """Programs whose execution recorded at least one line that ran (coverage collected and non-empty)."""
        rows = self._db.execute(
            "SELECT program_id FROM executions"
            " WHERE coverage IS NOT NULL AND json_array_length(json_extract(coverage, '$.lines')) > 0"
        )
        return {r[0] for r in rows}

    # -- repair trajectories (RLEF) ---------------------------------------------------------------

    def add_public_results(self, rows: Iterable[tuple[int, int, int, str | None]]) -> int:
        """Store (program id, public tests passed, public tests, feedback or None) in one transaction; a program
        keeps its first. Returns how many were new."""
        with self._write():
            before = self._count("public_results")
            self._db.executemany(
                "INSERT OR IGNORE INTO public_results (program_id, passed, total, feedback) VALUES (?, ?, ?, ?)",
                list(rows),
            )
            return self._count("public_results") - before

    def without_public_results(self, round: int, max_turn: int) -> list[Program]:
        """Tested programs of `round` at a turn below `max_turn` that have no public result yet, oldest first."""
        rows = self._db.execute(
            _PROGRAMS + " LEFT JOIN public_results r ON r.program_id = p.id"
            " WHERE e.program_id IS NOT NULL AND r.program_id IS NULL AND p.round = ? AND COALESCE(t.turn, 1) < ?"
            " ORDER BY p.id",
            (round, max_turn),
        )
        return [_program(r) for r in rows]

    def to_repair(self, round: int, turn: int) -> list[tuple[Program, str]]:
        """(program, its feedback) for each program of `round` at `turn` that failed a public test and has no
        repair yet, oldest first: the parents of the next turn."""
        rows = self._db.execute(
            "SELECT p.id, r.feedback FROM programs p LEFT JOIN trajectories t ON t.program_id = p.id"
            " JOIN public_results r ON r.program_id = p.id"
            " WHERE p.round = ? AND COALESCE(t.turn, 1) = ? AND r.feedback IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM trajectories c WHERE c.parent_id = p.id)"
            " ORDER BY p.id",
            (round, turn),
        ).fetchall()
        return [(self.program(program_id), feedback) for program_id, feedback in rows]

    def add_repairs(self, repairs: Sequence[Repair]) -> list[int]:
        """Store the programs of repair turns with their place in the trajectory, in one transaction; returns
        their ids. A program is keyed by its text and its conversation, so the same text reached in another
        turn or trajectory is its own candidate."""
        with self._write():
            # the conversation and the parent: two parents of the same text (other prefixes) get repairs of their own
            contexts = [json.dumps({"messages": r.messages, "parent": r.parent_id}, sort_keys=True) for r in repairs]
            ids = self._insert_programs([r.program for r in repairs], contexts)
            for program_id, repair in zip(ids, repairs, strict=True):
                parent = self._turn(repair.parent_id)
                self._db.execute(
                    "INSERT OR IGNORE INTO trajectories (program_id, task_id, root_id, turn, parent_id, feedback,"
                    " messages, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        program_id,
                        repair.program.task_id,
                        parent.root_id,
                        parent.turn + 1,
                        repair.parent_id,
                        repair.feedback,
                        json.dumps(repair.messages, sort_keys=True),
                        repair.answer,
                    ),
                )
            return ids

    def _turn(self, program_id: int) -> Turn:
        row = self._db.execute(
            "SELECT turn, root_id, parent_id, feedback, messages, answer FROM trajectories WHERE program_id = ?",
            (program_id,),
        ).fetchone()
        if row is None:
            if self._db.execute("SELECT 1 FROM programs WHERE id = ?", (program_id,)).fetchone() is None:
                raise KeyError(program_id)
            return Turn(program_id, 1, program_id)
        turn, root, parent, feedback, messages, answer = row
        return Turn(program_id, turn, root, parent, feedback, tuple(json.loads(messages)), answer)

    def turn(self, program_id: int) -> Turn:
        """The program's place in its repair trajectory (turn 1 for a first attempt)."""
        return self._turn(program_id)

    def turns(self) -> dict[int, Turn]:
        """Program id -> its `Turn`, for the programs written in repair turns (turn >= 2)."""
        rows = self._db.execute(
            "SELECT program_id, turn, root_id, parent_id, feedback, messages, answer FROM trajectories"
        )
        return {r[0]: Turn(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6]) for r in rows}

    def turn_counts(self) -> dict[int, dict[int, dict[str, int]]]:
        """Round -> turn -> programs and how many of them pass every test."""
        out: dict[int, dict[int, dict[str, int]]] = {}
        rows = self._db.execute(
            "SELECT p.round, COALESCE(t.turn, 1), COUNT(*), SUM(e.passed = e.total)"
            " FROM programs p JOIN executions e ON e.program_id = p.id"
            " LEFT JOIN trajectories t ON t.program_id = p.id GROUP BY 1, 2 ORDER BY 1, 2"
        )
        for r, turn, n, solved in rows:
            out.setdefault(r, {})[turn] = {"programs": n, "passing": int(solved or 0)}
        return out

    # -- line labels (process reward model) ----------------------------------------------------------

    def add_line_labels(self, search: LineSearch) -> None:
        """Store one program's line search and the labels it gives, in one transaction (a program already
        labelled keeps its first labels)."""
        with self._write():
            done = self._db.execute(
                "INSERT OR IGNORE INTO line_searches (program_id, first_bad, probes, completer, completions, seconds,"
                " created, contradictions) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (search.program_id, search.first_bad, json.dumps([list(p) for p in search.probes]), search.completer,
                 search.completions, search.seconds, time.time(), json.dumps([list(c) for c in search.contradictions])),
            ).rowcount  # fmt: skip
            if done:
                self._db.executemany(
                    "INSERT INTO line_labels (program_id, line, label) VALUES (?, ?, ?)",
                    [(search.program_id, i, label) for i, label in enumerate(search.labels, 1)],
                )

    def line_labels(self) -> dict[int, list[int]]:
        """Program id -> the label of each of its lines (1-based order), for the labelled programs."""
        out: dict[int, list[int]] = {}
        for program_id, label in self._db.execute(
            "SELECT program_id, label FROM line_labels ORDER BY program_id, line"
        ):
            out.setdefault(program_id, []).append(label)
        return out

    def line_searches(self) -> dict[int, LineSearch]:
        """Program id -> its stored line search."""
        labels = self.line_labels()
        rows = self._db.execute(
            "SELECT program_id, first_bad, probes, completer, completions, seconds, contradictions FROM line_searches"
        )
        return {
            r[0]: LineSearch(
                r[0],
                r[1],
                tuple(tuple(p) for p in json.loads(r[2])),
                r[3],
                r[4],
                r[5],
                tuple(labels.get(r[0], ())),
                tuple(tuple(c) for c in json.loads(r[6])),
            )
            for r in rows
        }

    def add_prm_scores(self, prm: str, scores: dict[int, dict[int, float]]) -> None:
        """Store a PRM's line scores of programs (program id -> 1-based line -> score), in one transaction;
        scores a program already has from this PRM are replaced."""
        with self._write():
            self._db.executemany(
                "INSERT OR REPLACE INTO prm_scores (prm, program_id, line, score) VALUES (?, ?, ?, ?)",
                [(prm, pid, line, float(x)) for pid, values in scores.items() for line, x in values.items()],
            )

    def prm_scores(self, prm: str | None = None) -> dict[str, dict[int, dict[int, float]]]:
        """PRM id -> program id -> 1-based line -> score; with `prm`, that PRM's only."""
        sql = "SELECT prm, program_id, line, score FROM prm_scores"
        rows = (
            self._db.execute(sql + " WHERE prm = ? ORDER BY program_id, line", (prm,))
            if prm
            else self._db.execute(sql + " ORDER BY prm, program_id, line")
        )
        out: dict[str, dict[int, dict[int, float]]] = {}
        for name, pid, line, score in rows:
            out.setdefault(name, {}).setdefault(pid, {})[line] = score
        return out

    # -- online-RL groups ---------------------------------------------------------------------------

    def add_group(self, group: Group) -> int:
        """Store a GRPO group with its completions in one transaction; returns its id."""
        if not group.members:
            raise ValueError(f"a group of {group.task_id} without completions")
        for m in group.members:
            if len(m.completion_ids) != len(m.logps):
                raise ValueError(f"group of {group.task_id}: one log-probability per completion token")
        rewards = group.rewards
        with self._write():
            try:
                cursor = self._db.execute(
                    "INSERT INTO groups (task_id, step, model, prompt, prompt_ids, size, mean_reward, reward_std,"
                    " mean_possibility, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (group.task_id, group.step, group.model, group.prompt, json.dumps(list(group.prompt_ids)),
                     len(group.members), float(rewards.mean()), float(rewards.std()), group.possibility,
                     time.time()),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise KeyError(f"group for unknown task {group.task_id!r}: add the task first") from None
            group_id = int(cursor.lastrowid)
            self._db.executemany(
                "INSERT INTO group_members (group_id, position, completion, completion_ids, logps, reward)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(group_id, i, m.completion, json.dumps(list(m.completion_ids)), json.dumps(list(m.logps)), m.reward)
                 for i, m in enumerate(group.members)],
            )  # fmt: skip
        return group_id

    def group(self, group_id: int) -> Group:
        row = self._db.execute(
            "SELECT task_id, prompt, prompt_ids, step, model FROM groups WHERE id = ?", (group_id,)
        ).fetchone()
        if row is None:
            raise KeyError(group_id)
        members = tuple(
            Member(c, tuple(json.loads(ids)), tuple(json.loads(lp)), r)
            for c, ids, lp, r in self._db.execute(
                "SELECT completion, completion_ids, logps, reward FROM group_members WHERE group_id = ?"
                " ORDER BY position",
                (group_id,),
            )
        )
        return Group(row[0], row[1], tuple(json.loads(row[2])), members, row[3], row[4], group_id)

    def group_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mean possibility, mean reward) of the stored groups whose rewards differ (a group whose rewards
        all tie has zero advantage: nothing to learn from replaying it)."""
        rows = self._db.execute(
            "SELECT id, mean_possibility, mean_reward FROM groups WHERE reward_std > 0 ORDER BY id"
        ).fetchall()
        cols = list(zip(*rows, strict=True)) if rows else [(), (), ()]
        return (np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.float64),
                np.array(cols[2], dtype=np.float64))  # fmt: skip

    def group_count(self) -> int:
        return self._count("groups")

    def drop_groups(self, from_step: int) -> int:
        """Delete the groups sampled at `from_step` or later (a resumed run samples those steps again); returns how
        many were deleted."""
        with self._write():
            ids = [r[0] for r in self._db.execute("SELECT id FROM groups WHERE step >= ?", (from_step,))]
            self._db.executemany("DELETE FROM group_members WHERE group_id = ?", [(i,) for i in ids])
            self._db.executemany("DELETE FROM groups WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    # -- curriculum stages -----------------------------------------------------------------------

    def set_stages(self, round: int, stages: dict[str, int]) -> None:
        """Record each task's curriculum stage in `round` (one transaction); a recorded stage is kept."""
        with self._write():
            self._db.executemany(
                "INSERT OR IGNORE INTO stages (task_id, round, stage) VALUES (?, ?, ?)",
                [(task_id, round, stage) for task_id, stage in stages.items()],
            )

    def stages(self, round: int) -> dict[str, int]:
        """Task id -> its curriculum stage in `round`, for the tasks recorded there."""
        return dict(self._db.execute("SELECT task_id, stage FROM stages WHERE round = ?", (round,)).fetchall())

    def stage_counts(self) -> dict[int, dict[int, int]]:
        """Round -> stage -> how many tasks sat at that stage in that round."""
        out: dict[int, dict[int, int]] = {}
        for r, stage, n in self._db.execute(
            "SELECT round, stage, COUNT(*) FROM stages GROUP BY round, stage ORDER BY round, stage"
        ):
            out.setdefault(r, {})[stage] = n
        return out

    def density(self) -> dict[int, dict[str, Any]]:
        """The buffer's density per round of the tested programs sampled in it: tasks with at least one program
        passing every test, tasks with any program, and the share of programs passing at least one test."""
        out: dict[int, dict[str, Any]] = {}
        rows = self._db.execute(
            "SELECT p.round, COUNT(DISTINCT p.task_id),"
            " COUNT(DISTINCT CASE WHEN e.passed = e.total THEN p.task_id END),"
            " COUNT(*), SUM(e.passed > 0)"
            " FROM programs p JOIN executions e ON e.program_id = p.id GROUP BY p.round ORDER BY p.round"
        )
        for r, tasks, solved, programs, any_passed in rows:
            out[r] = {
                "tasks": tasks,
                "tasks_with_passing_program": solved,
                "programs": programs,
                "share_passing_a_test": any_passed / programs if programs else None,
            }
        return out

    # -- replay and statistics -----------------------------------------------------------------

    def replay_table(self, min_pass_rate: float | None = None, prm: str | None = None) -> ReplayTable:
        """The tested programs as column arrays (untested programs are never replayed); with `prm`, also each
        program's mean line score from that PRM (NaN where it scored none)."""
        sql = (
            "SELECT p.id, p.task_id, p.logprob, p.num_tokens, e.pass_rate, s.mean"
            " FROM programs p JOIN executions e ON e.program_id = p.id"
            " LEFT JOIN (SELECT program_id, AVG(score) AS mean FROM prm_scores WHERE prm = ? GROUP BY program_id) s"
            " ON s.program_id = p.id"
        )
        args: tuple = (prm or "",)
        if min_pass_rate is not None:
            sql, args = sql + " WHERE e.pass_rate >= ?", (*args, min_pass_rate)
        rows = self._db.execute(sql + " ORDER BY p.id", args).fetchall()
        cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), (), ()]
        return ReplayTable(
            program_id=np.array(cols[0], dtype=np.int64),
            task_id=np.array(cols[1], dtype=object),
            logprob=np.array(cols[2], dtype=np.float64),
            num_tokens=np.array(cols[3], dtype=np.int64),
            pass_rate=np.array(cols[4], dtype=np.float64),
            prm_score=np.array([np.nan if x is None else x for x in cols[5]], dtype=np.float64) if prm else None,
        )

    def prm_ids(self) -> set[str]:
        """The PRMs whose scores the buffer holds."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT prm FROM prm_scores")}

    def latest_prm(self) -> str | None:
        """The id of the PRM whose scores were stored last, if any."""
        row = self._db.execute("SELECT prm FROM prm_scores ORDER BY rowid DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def stats(self) -> dict[str, Any]:
        """Counts and the pass-rate distribution of the tested programs."""
        q = self._db.execute
        rates = np.array([r[0] for r in q("SELECT pass_rate FROM executions")], dtype=np.float64)
        bins = {
            "0": int((rates == 0).sum()),
            "(0,0.25)": int(((rates > 0) & (rates < 0.25)).sum()),
            "[0.25,0.5)": int(((rates >= 0.25) & (rates < 0.5)).sum()),
            "[0.5,0.75)": int(((rates >= 0.5) & (rates < 0.75)).sum()),
            "[0.75,1)": int(((rates >= 0.75) & (rates < 1)).sum()),
            "1": int((rates == 1).sum()),
        }
        return {
            "path": str(self.path),
            "tasks": self._count("tasks"),
            "tasks_with_programs": q("SELECT COUNT(DISTINCT task_id) FROM programs").fetchone()[0],
            "tasks_solved": q(
                "SELECT COUNT(DISTINCT p.task_id) FROM programs p JOIN executions e ON e.program_id = p.id"
                " WHERE e.passed = e.total"
            ).fetchone()[0],
            "programs": self._count("programs"),
            "tested": int(rates.size),
            "untested": self._count("programs") - int(rates.size),
            "mean_pass_rate": float(rates.mean()) if rates.size else None,
            "strict_accuracy": float((rates == 1).mean()) if rates.size else None,
            "pass_rate_distribution": bins,
            "programs_by_round": {str(r): n for r, n in q("SELECT round, COUNT(*) FROM programs GROUP BY round")},
            "programs_by_model": {m: n for m, n in q("SELECT model, COUNT(*) FROM programs GROUP BY model")},
            "density_by_round": {str(r): d for r, d in self.density().items()},
            "stages_by_round": {str(r): {str(s): n for s, n in c.items()} for r, c in self.stage_counts().items()},
            "turns_by_round": {str(r): {str(t): n for t, n in c.items()} for r, c in self.turn_counts().items()},
        }

    # -- task data, for publishing a buffer ----------------------------------------------------

    def strip_task_data(self) -> dict[str, int]:
        """Remove from the buffer, in place, what it copied from its tasks' source, so that the file may go where the
        tasks may not (a code repository, when their licence or a rule keeps the data out); how many of each:

        * `tasks`: each task's data (prompt, tests, reference solutions) becomes {"id", "sha256"}, the digest of the
          data as stored;
        * `references`: the text of a program that is one of its task's reference solutions becomes "" (its hash
          stays);
        * `quotes`: text that quotes a task, a GRPO group's prompt and its token ids, a repair turn's feedback and
          chat, a program's public-test feedback, becomes "" ([] for token ids);
        * `errors`: the programs whose tests' error texts (which quote the failing test) become "" (no error stays
          null); the verdicts, pass rates and times stay, and nothing pper runs later reads the texts.

        `restore_task_data` puts the first two back from the same tasks, checked against the digests and hashes;
        quotes and error texts are gone for good: a finished run's history, which none of its later steps reads.
        Until then the buffer's tasks cannot be read (`PperError`). The file is rewritten (VACUUM, rollback
        journal), so no copy of what was removed stays in its free pages or a WAL.
        """
        q, q_many = self._db.execute, self._db.executemany
        with self._write():
            if self._meta(STRIPPED) is not None:
                raise PperError(f"{self.path}: its task data was stripped already")
            tasks = q("SELECT id, data FROM tasks").fetchall()
            solutions = {(i, s) for i, d in tasks for s in json.loads(d).get("solutions") or ()}
            refs = [i for i, task, text in q("SELECT id, task_id, text FROM programs") if (task, text) in solutions]
            digests = [(json.dumps({"id": i, "sha256": hashlib.sha256(d.encode()).hexdigest()}), i) for i, d in tasks]
            q_many("UPDATE tasks SET data = ? WHERE id = ?", digests)
            q_many("UPDATE programs SET text = '' WHERE id = ?", [(i,) for i in refs])
            quotes = sum(
                q(sql).rowcount
                for sql in (
                    "UPDATE groups SET prompt = '', prompt_ids = '[]'",
                    "UPDATE trajectories SET feedback = '', messages = '[]'",
                    "UPDATE public_results SET feedback = '' WHERE feedback IS NOT NULL",
                )
            )
            errors = [
                (json.dumps(["" if e is not None else None for e in json.loads(texts)]), i)
                for i, texts in q("SELECT program_id, errors FROM executions").fetchall()
                if any(e for e in json.loads(texts))
            ]
            q_many("UPDATE executions SET errors = ? WHERE program_id = ?", errors)
            self._set_meta(STRIPPED, json.dumps({"references": refs}))
        q("VACUUM")
        q("PRAGMA journal_mode=DELETE")  # the file alone holds the buffer; reopening it returns to WAL
        return {"tasks": len(tasks), "references": len(refs), "quotes": quotes, "errors": len(errors)}

    def restore_task_data(self, tasks: Iterable[Task]) -> dict[str, int]:
        """Put back what `strip_task_data` removed and can come back: the data of each task (found by id among `tasks`,
        refused unless its digest is the stored one: the tasks' source changed) and the text of each reference
        program (the one of its task's solutions whose hash is the program's). How many of each; nothing for a
        buffer never stripped. Quotes stay empty."""
        stripped = self._meta(STRIPPED)
        if stripped is None:
            return {"tasks": 0, "references": 0}
        by_id = {t.id: json.dumps(t.to_dict()) for t in tasks}
        rows = []
        for task_id, data in self._db.execute("SELECT id, data FROM tasks").fetchall():
            digest = json.loads(data).get("sha256")
            if digest is None:
                continue
            if task_id not in by_id:
                raise PperError(f"{self.path}: task {task_id} was stripped from it and is not among the tasks given")
            if hashlib.sha256(by_id[task_id].encode()).hexdigest() != digest:
                raise PperError(
                    f"{self.path}: task {task_id} differs from the one the buffer was made with (its source changed "
                    "since; restore from the same data)"
                )
            rows.append((by_id[task_id], task_id))
        texts = []
        for program_id in json.loads(stripped)["references"]:
            task_id, digest, prefix = self._db.execute(
                "SELECT task_id, hash, prefix FROM programs WHERE id = ?", (program_id,)
            ).fetchone()
            solutions = [s for s in json.loads(by_id[task_id])["solutions"] if program_hash(s, prefix) == digest]
            if not solutions:
                raise PperError(f"{self.path}: program {program_id} is none of task {task_id}'s reference solutions")
            texts.append((solutions[0], program_id))
        with self._write():
            self._db.executemany("UPDATE tasks SET data = ? WHERE id = ?", rows)
            self._db.executemany("UPDATE programs SET text = ? WHERE id = ?", texts)
            self._db.execute("DELETE FROM meta WHERE key = ?", (STRIPPED,))
        return {"tasks": len(rows), "references": len(texts)}

    def _count(self, table: str) -> int:
        return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


_PROGRAMS = (
    "SELECT p.id, p.task_id, p.text, p.logprob, p.num_tokens, p.model, p.round,"
    " e.verdicts, e.errors, e.times, e.duration, e.coverage, p.prefix, COALESCE(t.turn, 1), t.messages"
    " FROM programs p LEFT JOIN executions e ON e.program_id = p.id LEFT JOIN trajectories t ON t.program_id = p.id"
)


def _program(r: tuple) -> Program:
    verdicts, errors, times, duration, coverage, prefix, turn, messages = r[7:]
    result = None
    if verdicts is not None:
        verdict_list = json.loads(verdicts)
        lines: list = [None] * len(verdict_list)
        executed, complete = None, True
        if coverage is not None:
            cov = json.loads(coverage)
            executed, complete, lines = tuple(cov["lines"]), cov["complete"], [tuple(t) for t in cov["tests"]]
            lines += [()] * (len(verdict_list) - len(lines))
        tests = zip(verdict_list, json.loads(errors), json.loads(times), lines, strict=True)
        result = ProgramResult(tuple(TestResult(v, e, t, c) for v, e, t, c in tests), duration, executed, complete)
    return Program(*r[:7], result, prefix, turn, tuple(json.loads(messages)) if messages else ())


def _coverage_json(result: ProgramResult) -> str | None:
    """The executions row's `coverage` value: NULL where coverage was not collected."""
    if result.executed_lines is None:
        return None
    tests = [list(t.executed_lines or ()) for t in result.tests]
    return json.dumps({"lines": list(result.executed_lines), "tests": tests, "complete": result.coverage_complete})


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated statements inside the open transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


# -- migrations: MIGRATIONS[n - 1] takes a file from schema n to n + 1 inside one transaction ------------------


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Executions keep every test's error text and time (`errors`, `times`), replacing the first error text.

    Version 1 kept only the first error text and the program's time: the text goes to the first test that did
    not pass (where `ProgramResult.error` finds it again; the first test if all passed), and every test's time
    is 0 (unknown).
    """
    _execute_script(
        db,
        """
        CREATE TABLE executions_v2 (
            program_id INTEGER PRIMARY KEY REFERENCES programs(id),
            passed INTEGER NOT NULL,
            total INTEGER NOT NULL CHECK (total >= 1 AND passed BETWEEN 0 AND total),
            pass_rate REAL NOT NULL,
            verdicts TEXT NOT NULL,          -- JSON list, one verdict per test
            errors TEXT NOT NULL,            -- JSON list, one error text (or null) per test
            times TEXT NOT NULL,             -- JSON list, one wall time in seconds per test
            duration REAL NOT NULL,          -- the program's whole run, in seconds
            created REAL NOT NULL
        )
        """,
    )
    rows = []
    for program_id, passed, total, pass_rate, verdicts, error, duration, created in db.execute(
        "SELECT program_id, passed, total, pass_rate, verdicts, error, duration, created FROM executions"
    ):
        verdict_list = json.loads(verdicts)
        errors: list[str | None] = [None] * len(verdict_list)
        if error is not None and errors:
            errors[next((i for i, v in enumerate(verdict_list) if v != PASSED), 0)] = error
        times = json.dumps([0.0] * len(verdict_list))
        rows.append((program_id, passed, total, pass_rate, verdicts, json.dumps(errors), times, duration, created))
    db.executemany("INSERT INTO executions_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("DROP TABLE executions")
    db.execute("ALTER TABLE executions_v2 RENAME TO executions")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Line coverage of executions (`executions.coverage`, NULL: not collected), the prefix a program was given
    (`programs.prefix`, empty for every earlier program), and curriculum stages per task and round (`stages`)."""
    _execute_script(
        db,
        """
        ALTER TABLE programs ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
        ALTER TABLE executions ADD COLUMN coverage TEXT;
        CREATE TABLE stages (
            task_id TEXT NOT NULL REFERENCES tasks(id),
            round INTEGER NOT NULL,
            stage INTEGER NOT NULL,
            PRIMARY KEY (task_id, round)
        )
        """,
    )


def _v3_to_v4(db: sqlite3.Connection) -> None:
    """Repair trajectories (RLEF): the public tests' results and feedback of a program (`public_results`), and
    each repair turn's program with its parent, turn, feedback and conversation (`trajectories`). Every earlier
    program is a first attempt."""
    _execute_script(
        db,
        """CREATE TABLE public_results (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),
    passed INTEGER NOT NULL,
    total INTEGER NOT NULL CHECK (total >= 1 AND passed BETWEEN 0 AND total),
    feedback TEXT                    -- what a repair turn tells the model, NULL when every public test passed
);
CREATE TABLE trajectories (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),  -- the program a repair turn wrote
    task_id TEXT NOT NULL REFERENCES tasks(id),
    root_id INTEGER NOT NULL REFERENCES programs(id),        -- the trajectory's first program (turn 1)
    turn INTEGER NOT NULL CHECK (turn >= 2),
    parent_id INTEGER NOT NULL REFERENCES programs(id),      -- the program of the turn before
    feedback TEXT NOT NULL,                                  -- what the model was told about the parent
    messages TEXT NOT NULL,                                  -- JSON: the chat the model answered
    answer TEXT NOT NULL                                     -- the answer it is trained to give: the program, fenced
);
CREATE INDEX trajectories_by_parent ON trajectories(parent_id)""",
    )


def _v4_to_v5(db: sqlite3.Connection) -> None:
    """Online-RL groups (`groups`, `group_members`): a prompt's completions with their rewards and the sampling
    policy's token log-probabilities, for prioritized group replay (`pper.rl`)."""
    _execute_script(
        db,
        """CREATE TABLE groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(id),
    step INTEGER NOT NULL,           -- the online-RL step that sampled it
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    prompt_ids TEXT NOT NULL,        -- JSON: the prompt's token ids
    size INTEGER NOT NULL CHECK (size >= 1),
    mean_reward REAL NOT NULL,
    reward_std REAL NOT NULL,        -- population std of the rewards, 0 when they all tie
    mean_possibility REAL NOT NULL,  -- mean over the completions of P(t), their geometric-mean token probability
    created REAL NOT NULL
);
CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES groups(id),
    position INTEGER NOT NULL,
    completion TEXT NOT NULL,
    completion_ids TEXT NOT NULL,    -- JSON: the completion's token ids
    logps TEXT NOT NULL,             -- JSON: the sampling policy's log-probability of each of them
    reward REAL NOT NULL,
    PRIMARY KEY (group_id, position)
)""",
    )


def _v5_to_v6(db: sqlite3.Connection) -> None:
    """Line labels of the process reward model and its scores (`line_searches`, `line_labels`, `prm_scores`;
    `pper.prm`)."""
    _execute_script(
        db,
        """CREATE TABLE line_searches (
    program_id INTEGER PRIMARY KEY REFERENCES programs(id),
    first_bad INTEGER NOT NULL,      -- the first line from which no completion passed (lines + 1: none)
    probes TEXT NOT NULL,            -- JSON: [[prefix lines, completable], ...] in the order probed
    completer TEXT NOT NULL,         -- what completed the prefixes: reference, model, reference+model
    completions INTEGER NOT NULL,    -- sampled completions per probe (0: the reference's only)
    seconds REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE line_labels (
    program_id INTEGER NOT NULL REFERENCES line_searches(program_id),
    line INTEGER NOT NULL CHECK (line >= 1),
    label INTEGER NOT NULL CHECK (label IN (0, 1)),  -- 1: the program's first `line` lines can still pass
    PRIMARY KEY (program_id, line)
);
CREATE TABLE prm_scores (
    prm TEXT NOT NULL,               -- the PRM that scored (`pper prm train`'s id)
    program_id INTEGER NOT NULL REFERENCES programs(id),
    line INTEGER NOT NULL CHECK (line >= 1),
    score REAL NOT NULL,             -- the PRM's probability that the line is good
    PRIMARY KEY (prm, program_id, line)
)""",
    )


def _v6_to_v7(db: sqlite3.Connection) -> None:
    """A line search records the probes that contradict the monotonicity it assumes (`contradictions`)."""
    db.execute("ALTER TABLE line_searches ADD COLUMN contradictions TEXT NOT NULL DEFAULT '[]'")


def _v7_to_v8(db: sqlite3.Connection) -> None:
    """Every program a round sampled, with how many of its candidates it was (`sampled_programs`): a program
    sampled again keeps its first round in `programs`, and the curriculum's advancement counts the round's samples."""
    _execute_script(
        db,
        """CREATE TABLE sampled_programs (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    model TEXT NOT NULL,
    round INTEGER NOT NULL,
    program_id INTEGER NOT NULL REFERENCES programs(id),
    count INTEGER NOT NULL CHECK (count >= 1),  -- how many of the round's candidates were this program
    PRIMARY KEY (model, round, program_id)
)""",
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1_to_v2,
    _v2_to_v3,
    _v3_to_v4,
    _v4_to_v5,
    _v5_to_v6,
    _v6_to_v7,
    _v7_to_v8,
)


def _remove_database(path: Path, keep_main: bool = False) -> None:
    """Delete an SQLite file's WAL and shared-memory files, and the file itself unless `keep_main`."""
    for suffix in ("-wal", "-shm") if keep_main else ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _task(data: str) -> Task:
    try:
        row = json.loads(data)
        if set(row) == {"id", "sha256"}:
            raise PperError(
                f"task {row['id']}'s data was stripped from this buffer (`strip_task_data`, as `pper experiment "
                "archive` does): put it back with `pper experiment restore` or `ReplayBuffer.restore_task_data`"
            )
        return Task.from_dict(row)
    except (RowError, json.JSONDecodeError) as e:  # only if the file was edited by hand
        raise PperError(f"a task stored in the replay buffer is corrupt: {e}") from None
