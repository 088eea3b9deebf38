"""A child that dies is labelled by what killed it, not `memory_limit` for every SIGKILL."""

from __future__ import annotations

import os
import signal

from pper.execution import Executor, Limits, server
from pper.tasks import AssertTests, Task

TASK = Task(id="causes/f", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f(1) == 2",) * 2))
SELF_KILL = "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
SELF_KILL_AT_IMPORT = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\ndef f(x):\n    return x + 1\n"
IGNORE_SIGXCPU = (
    "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\ndef f(x):\n    while True:\n        pass\n"
)


def test_a_program_that_kills_itself_is_a_runtime_error_naming_the_signal():
    with Executor(workers=1) as executor:
        in_test, at_import = executor.run(TASK, SELF_KILL), executor.run(TASK, SELF_KILL_AT_IMPORT)
    for result in (in_test, at_import):
        assert result.verdicts == ("runtime_error", "runtime_error"), result
        assert all("SIGKILL" in t.error for t in result.tests)


def test_the_kernel_killing_a_program_at_its_cpu_limit_is_a_timeout():
    """A program that ignores SIGXCPU runs on to the hard RLIMIT_CPU, where the kernel sends SIGKILL."""
    limits = Limits(wall_time=60.0, cpu_time=0.5, load_time=0.5)
    assert server.cpu_seconds(limits, [60.0]) == 2  # soft; the hard limit is 3 s, far within the wall time
    task = Task(id="causes/one", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f(1) == 2",)))
    with Executor(workers=1, limits=limits) as executor:
        result = executor.run(task, IGNORE_SIGXCPU)
    assert result.verdicts == ("timeout",), result
    assert "CPU time limit" in result.error


def test_death_causes():
    """The cause from the wait status, the CPU used against RLIMIT_CPU and the kernel's OOM-kill count
    (a real OOM kill cannot be provoked safely in a test)."""
    killed, xcpu, segv = signal.SIGKILL, signal.SIGXCPU, signal.SIGSEGV  # wait statuses of signal deaths
    assert server._death(killed, b"", 0.1, 5, 7, 8)["status"] == "memory"
    assert server._death(killed, b"", 0.1, 5, 7, 7) == {"status": "error", "error": "killed by signal SIGKILL"}
    assert server._death(killed, b"", 0.1, 5, None, None)["status"] == "error"
    assert server._death(killed, b"", 6.0, 5, 7, 8)["status"] == "timeout"  # the hard CPU limit comes first
    assert server._death(xcpu, b"")["status"] == "timeout"
    assert server._death(segv, b"", 0.1, 5, 7, 8)["error"] == "killed by signal SIGSEGV"
    assert server._death(3 << 8, b"Traceback\nValueError: x\n")["error"].endswith("status 3: ValueError: x")


def test_the_oom_kill_count_is_read_where_the_kernel_has_it():
    if not os.path.exists("/proc/vmstat"):
        return
    fd = os.open("/proc/vmstat", os.O_RDONLY)
    try:
        assert isinstance(server._oom_kills(fd), int)
    finally:
        os.close(fd)
    assert server._oom_kills(None) is None
