"""Per-test time limits calibrated from reference solutions, as evalplus does.

A task's reference solution (its first) runs once in the sandbox, with generous limits (`MEASURE` seconds
per test), and the wall time t_i of each of its tests is recorded. Programs for the task then get, on
test i,

    limit_i = max(wall_time, time_factor x t_i)    (`Limits.wall_time` the floor, `Limits.time_factor`)

seconds of wall time, and CPU time scaled the same way (see `server.cpu_seconds`). A test the reference
timed out on even with `MEASURE` seconds keeps the floor; so does every test of a task without a reference.

Measured times are cached in `$PPER_CACHE/limits/<key>.json`, where key is a hash of this machine's CPU
(`cpu_key`), `VERSION` and every task of the set (its id, entry point, tests and reference: `task_key`):
a task set is measured once on a machine. A set not seen before reuses the times of its tasks found in the
other files of this CPU (same `task_key`), so only tasks never measured here run. The file lists each
task's per-test times and the reference's verdicts, so the limits a task gets can be read there (or from
`Executor.time_limits`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..cache import cache_root
from ..files import write_atomic
from ..tasks import Task
from .limits import Limits
from .results import PASSED, TIMEOUT, ProgramResult

VERSION = 1
MEASURE = 60.0  # seconds of wall and CPU time per test a reference may take while it is measured
Times = tuple[float | None, ...]  # a reference's seconds per test; None where it timed out
_KNOWN: dict[tuple[str, str], dict[str, dict]] = {}  # (cache folder, CPU) -> task_key -> entry, this process


def cpu_name() -> str:
    """The CPU's model name(s) from /proc/cpuinfo, else what `platform` knows."""
    models: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    except OSError:
        pass
    return " + ".join(sorted(models)) or platform.processor() or platform.machine()


def cpu_key() -> str:
    """This machine's CPU, as far as speed goes: architecture, model name(s) and the number of cores."""
    return f"{platform.machine()} {cpu_name()} x{os.cpu_count()}"


def task_key(task: Task) -> str:
    """What a task's reference time depends on: its id, entry point, tests and reference."""
    text = json.dumps(
        [task.id, task.entry_point, task.tests.to_dict(), task.solutions[0] if task.solutions else None],
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(tasks: Sequence[Task], cpu: str) -> Path:
    """The cache file of this task set on a machine with this CPU."""
    digest = hashlib.sha256(json.dumps([VERSION, cpu, sorted(task_key(t) for t in tasks)]).encode())
    return cache_root() / "limits" / f"{digest.hexdigest()[:32]}.json"


def measuring_limits(limits: Limits) -> Limits:
    """The limits a reference runs under while it is measured: `MEASURE` seconds per test, the rest as given."""
    return replace(limits, wall_time=MEASURE, cpu_time=MEASURE, load_time=max(limits.load_time, MEASURE))


def time_limits(times: Times, limits: Limits) -> tuple[float, ...]:
    """Per-test wall-time limits: max(wall_time, time_factor x t_i), the floor where t_i is unknown."""
    return tuple(limits.wall_time if t is None else max(limits.wall_time, limits.time_factor * t) for t in times)


def reference_times(
    tasks: Sequence[Task], measure: Callable[[list[Task]], list[ProgramResult]], cpu: str | None = None
) -> dict[str, Times]:
    """Each task's reference time per test (tasks without a reference are left out): read from the cache
    of this task set and CPU, else measured by `measure` (running each task's first solution against its
    tests under `measuring_limits`, in task order) and cached."""
    tasks = list({t.id: t for t in tasks if t.solutions}.values())
    if not tasks:
        return {}
    cpu = cpu or cpu_key()
    keys = {t.id: task_key(t) for t in tasks}
    path = cache_path(tasks, cpu)
    cached = _read(path, cpu)
    if cached is not None and all(cached.get(t.id, {}).get("key") == keys[t.id] for t in tasks):
        return {t.id: tuple(cached[t.id]["times"]) for t in tasks}
    known = _known(path.parent, cpu)
    todo = [t for t in tasks if keys[t.id] not in known]
    measured = {t.id: _entry(t, r) for t, r in zip(todo, measure(todo) if todo else [], strict=True)}
    known.update((e["key"], e) for e in measured.values())
    entries = {t.id: known[keys[t.id]] for t in tasks}
    failing = sorted(i for i, e in measured.items() if any(v != PASSED for v in e["verdicts"]))
    if failing:
        shown = ", ".join(failing[:5]) + (f" and {len(failing) - 5} more" if len(failing) > 5 else "")
        warnings.warn(
            f"time-limit calibration: the reference solutions of {len(failing)} tasks fail some of their own "
            f"tests ({shown}); their measured times are used all the same (see {path})",
            stacklevel=3,
        )
    write_atomic(path, json.dumps({"version": VERSION, "cpu": cpu, "tasks": entries}, indent=1) + "\n")
    return {i: tuple(e["times"]) for i, e in entries.items()}


def _entry(task: Task, result: ProgramResult) -> dict:
    return {
        "key": task_key(task),
        "times": [None if t.verdict == TIMEOUT else round(t.time, 6) for t in result.tests],
        "verdicts": list(result.verdicts),
    }


def _known(folder: Path, cpu: str) -> dict[str, dict]:
    """Every task measured on this CPU, by `task_key`, from all cache files (read once per process)."""
    known = _KNOWN.get((str(folder), cpu))
    if known is None:
        known = _KNOWN[(str(folder), cpu)] = {}
        for path in sorted(folder.glob("*.json")):
            for entry in (_read(path, cpu) or {}).values():
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    known[entry["key"]] = entry
    return known


def _read(path: Path, cpu: str) -> dict | None:
    """The task entries of a cache file of this version and CPU; None if it is missing or unusable."""
    try:
        data = json.loads(path.read_text())
        return data["tasks"] if data.get("version") == VERSION and data.get("cpu") == cpu else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
