"""Time limits calibrated from reference solutions: limit = max(wall_time, time_factor x the reference's
time), per test, measured once per task set and CPU and cached under $PPER_CACHE."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from pper.execution import Executor, Limits, calibration
from pper.tasks import AssertTests, Task

SLEEPS = "import time\ndef f(x):\n    time.sleep({seconds})\n    return x + 1\n"
# the reference takes 0.5 s on the first test, nothing on the second
SLOW_TASK = Task(
    id="calibration/slow",
    prompt="",
    entry_point="f",
    tests=AssertTests(asserts=("assert f(1) == 2", "assert f(0) == 1")),
    solutions=("import time\ndef f(x):\n    time.sleep(0.5 * x)\n    return x + 1\n",),
)
FAST_TASK = Task(
    id="calibration/fast",
    prompt="",
    entry_point="f",
    tests=AssertTests(asserts=("assert f(1) == 2",)),
    solutions=("def f(x):\n    return x + 1\n",),
)
NO_REFERENCE = Task(id="calibration/none", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f(1) == 2",)))
LIMITS = Limits(wall_time=0.5, cpu_time=0.5, load_time=2.0, time_factor=4.0)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PPER_CACHE", str(tmp_path))
    return tmp_path


def test_the_limit_is_the_floor_or_the_factor_times_the_reference_time():
    limits = Limits(wall_time=1.0, time_factor=4.0)
    assert calibration.time_limits((0.01, 0.25, 0.5, 3.0, None), limits) == (1.0, 1.0, 2.0, 12.0, 1.0)


def test_programs_get_the_calibrated_limit_of_each_test():
    with Executor(workers=1, limits=LIMITS) as executor:
        limits = executor.calibrate([SLOW_TASK, NO_REFERENCE])
        # the reference's times as measured (cached): on a loaded machine even the instant test can take a while,
        # and the 0.5 s sleep can measure a little less (the server times a test from when it reads its start)
        saved = json.loads(calibration.cache_path([SLOW_TASK], calibration.cpu_key()).read_text())
        slow, fast = saved["tasks"][SLOW_TASK.id]["times"]
        assert slow > 0.4  # the sleep, as the worker saw it
        assert limits[SLOW_TASK.id] == (4 * slow, max(0.5, 4 * fast))  # max(floor, factor x time): above the floor
        assert limits[NO_REFERENCE.id] == (0.5,)  # no reference: the floor
        # 1 s on the first test: within its calibrated limit (it would time out at 0.5 s without calibration)
        assert executor.run(SLOW_TASK, SLEEPS.format(seconds="0.5 * x + 0.5 * (x == 1)")).all_passed
        assert executor.run(SLOW_TASK, SLEEPS.format(seconds="100 * x")).verdicts == ("timeout", "passed")
        assert executor.run(SLOW_TASK, SLEEPS.format(seconds="0.5 + 100 * (x == 0)")).verdicts == (
            "passed",
            "timeout",
        )
    with Executor(workers=1, limits=LIMITS, calibrate=False) as executor:
        assert executor.calibrate([SLOW_TASK]) == {SLOW_TASK.id: (0.5, 0.5)}
        assert executor.run(SLOW_TASK, SLEEPS.format(seconds="0.5 * x + 0.5 * (x == 1)")).verdicts[0] == "timeout"


def test_a_task_submitted_without_calibrate_is_calibrated_first():
    with Executor(workers=1, limits=LIMITS) as executor:
        assert executor.run(SLOW_TASK, SLEEPS.format(seconds="0.5 * x + 0.5 * (x == 1)")).all_passed
        assert executor.time_limits(SLOW_TASK)[0] > 1.5


def test_measured_once_per_task_set_and_cpu(cache, monkeypatch):
    runs: list[list[str]] = []
    other = replace(FAST_TASK, id="calibration/other")
    changed = replace(FAST_TASK, tests=AssertTests(asserts=("assert f(2) == 3",)))
    with Executor(workers=2, limits=LIMITS) as executor:

        def measure(tasks):
            runs.append([t.id for t in tasks])
            return executor._measure(tasks)

        first = calibration.reference_times([SLOW_TASK, FAST_TASK, NO_REFERENCE], measure, cpu="cpu A")
        assert runs == [[SLOW_TASK.id, FAST_TASK.id]] and set(first) == {SLOW_TASK.id, FAST_TASK.id}
        assert first[SLOW_TASK.id][0] > 0.4  # the sleep, as the worker saw it
        again = calibration.reference_times([FAST_TASK, SLOW_TASK], measure, cpu="cpu A")
        assert len(runs) == 1 and again == first  # read from the cache: nothing ran
        calibration.reference_times([SLOW_TASK, FAST_TASK], measure, cpu="cpu B")
        assert runs[1:] == [[SLOW_TASK.id, FAST_TASK.id]]  # another CPU: measured again
        assert calibration.reference_times([SLOW_TASK], measure, cpu="cpu A") == {SLOW_TASK.id: first[SLOW_TASK.id]}
        assert len(runs) == 2  # another task set, of tasks measured on this CPU: their times are reused
        calibration.reference_times([SLOW_TASK, other], measure, cpu="cpu A")
        assert runs[2:] == [[other.id]]  # only the task never measured runs
        calibration.reference_times([SLOW_TASK, changed], measure, cpu="cpu A")
        assert runs[3:] == [[changed.id]]  # a task whose tests changed is measured again
        monkeypatch.setattr(calibration, "_KNOWN", {})  # another process: it finds them in the files
        calibration.reference_times([other, FAST_TASK], measure, cpu="cpu A")
        assert len(runs) == 4
    assert len(list((cache / "limits").glob("*.json"))) == 6  # one per task set and CPU
    saved = json.loads(calibration.cache_path([SLOW_TASK, FAST_TASK], "cpu A").read_text())
    assert saved["cpu"] == "cpu A"
    assert saved["tasks"][SLOW_TASK.id]["verdicts"] == ["passed", "passed"]
    assert saved["tasks"][SLOW_TASK.id]["times"] == list(first[SLOW_TASK.id])


def test_the_cpu_key_names_this_machine():
    key = calibration.cpu_key()
    assert key == calibration.cpu_key() and key.endswith(f"x{os.cpu_count()}")
