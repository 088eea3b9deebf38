"""The worker pool: killed workers are replaced and their programs re-run; the fallback without namespaces."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import pper
from pper.execution import Executor, Limits, server
from pper.tasks import AssertTests, Task

TASK = Task(id="t", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f(1) == 2", "assert f(5) == 6")))
SLOW_OK = "import time\ndef f(x):\n    time.sleep(0.3)\n    return x + 1\n"


def _kill_during_a_program(executor: Executor, processes, jobs: int) -> tuple[list, int]:
    """Run `jobs` slow programs and SIGKILL the worker's server while one of them runs (its server has a child:
    under `unshare` when isolated, the server is unshare's child). If every program ended before the kill
    could be seen (a starved test process), the batch is run again. The results and the killed server's pid."""
    sandbox = executor._sandboxes[0]
    for _ in range(20):
        futures = [executor.submit(TASK, SLOW_OK) for _ in range(jobs)]
        while not all(f.done() for f in futures):
            tree = processes.children()
            server = tree.get(sandbox.proc.pid, [None])[0] if sandbox.isolated else sandbox.proc.pid
            if tree.get(server):  # a program runs
                killed = sandbox.proc.pid
                os.killpg(killed, signal.SIGKILL)
                return [f.result() for f in futures], killed
            time.sleep(0.005)
        assert all(f.result().all_passed for f in futures)
    raise AssertionError("no program was seen running on the worker in 20 batches")


def test_a_killed_worker_is_replaced_and_its_programs_run_again(processes):
    with Executor(workers=1, limits=Limits(wall_time=10.0)) as executor:
        executor.run(TASK, SLOW_OK)  # the worker is up
        results, killed = _kill_during_a_program(executor, processes, 3)
        assert [r.verdicts for r in results] == [("passed", "passed")] * 3  # nothing lost
        assert executor._sandboxes[0].proc.pid != killed  # a new server took over


def test_a_program_that_keeps_killing_workers_is_marked_not_lost(monkeypatch):
    with Executor(workers=1) as executor:
        executor.run(TASK, SLOW_OK)
        sandbox = executor._sandboxes[0]
        original = sandbox.send

        def send_then_die(*args, **kwargs):  # every attempt's server dies under it
            request = original(*args, **kwargs)
            os.killpg(sandbox.proc.pid, signal.SIGKILL)
            return request

        monkeypatch.setattr(sandbox, "send", send_then_die)
        result = executor.run(TASK, SLOW_OK)
        assert result.verdicts == ("runtime_error", "runtime_error")
        assert "the sandbox failed twice" in result.error


def test_without_namespaces_the_limits_still_hold(processes):
    with Executor(workers=1, isolation="none", limits=Limits(wall_time=0.5, cpu_time=0.5)) as executor:
        assert executor.run(TASK, "def f(x):\n    return x + 1\n").all_passed
        assert executor.run(TASK, "def f(x):\n    while True:\n        pass\n").verdicts == ("timeout", "timeout")
        name = f"orphan{os.getpid()}"  # the orphan's process name, to find it wherever it went
        orphan = (
            "import ctypes, os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
            f"        ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME\n"
            "        time.sleep(1000)\n    return x + 1\n"
        )
        assert executor.run(TASK, orphan).all_passed
        assert processes.left(processes.sandboxed) == [], "processes of the sandbox uids outlived their programs"
    assert processes.left(lambda: processes.named(name)) == [], "the orphan outlived its program"


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _unprivileged_python() -> list[str] | None:
    """A command that runs Python with pper.execution importable as uid 65534 (execution is stdlib-only)."""
    source = str(Path(pper.__file__).resolve().parents[1])
    for python in (sys.executable, "/usr/bin/python3"):
        cmd = [*NOBODY, "env", f"PYTHONPATH={source}", python]
        probe = subprocess.run([*cmd, "-c", "import pper.execution.pool"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return cmd
    return None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to switch to a plain user")
def test_as_an_unprivileged_user():
    """pper run by a plain user: a user namespace instead of a uid switch, the same limits."""
    python = _unprivileged_python()
    if python is None:
        pytest.skip("uid 65534 can run no Python that imports pper here (is the checkout under /root?)")
    script = (
        "from pper.execution import Executor, Limits\n"
        "from pper.tasks import AssertTests, Task\n"
        "t = Task(id='t', prompt='', entry_point='f', tests=AssertTests(asserts=('assert f(1) == 2',)))\n"
        "with Executor(workers=1, limits=Limits(wall_time=1.0)) as ex:\n"
        "    for p in ['def f(x):\\n    return x + 1\\n',\n"
        "              'import os\\ndef f(x):\\n    while True:\\n        os.fork()\\n',\n"
        "              'import socket\\ndef f(x):\\n    socket.create_connection((\"127.0.0.1\", 22), timeout=1)\\n',\n"
        '              \'def f(x):\\n    open("/pper-pwned", "w")\\n\']:\n'
        "        r = ex.run(t, p)\n"
        "        print(r.verdicts[0], '|', r.error)\n"
    )
    done = subprocess.run([*python, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("passed")
    assert lines[1].startswith("runtime_error | BlockingIOError")  # the fork bomb hits the process limit
    assert "Network is unreachable" in lines[2] and "Read-only file system" in lines[3]
    assert not Path("/pper-pwned").exists()


def test_more_suites_than_the_servers_cache_holds(monkeypatch):
    from pper.execution import pool

    monkeypatch.setattr(pool, "KNOWN_SUITES", 3)  # the server then caches 6
    tasks = [
        Task(id=f"t{i}", prompt="", entry_point="f", tests=AssertTests(asserts=(f"assert f({i}) == {i + 1}",)))
        for i in range(20)
    ]
    with Executor(workers=1) as executor:
        first_pid = None
        for _ in range(2):
            results = list(executor.map((t, "def f(x):\n    return x + 1\n") for t in tasks))
            assert all(r.all_passed for r in results)
            first_pid = first_pid or executor._sandboxes[0].proc.pid
        assert executor._sandboxes[0].proc.pid == first_pid  # no restart: the pool never sent a dropped key


def test_output_is_kept_when_poll_reports_only_the_result_pipe(monkeypatch):
    """A loaded machine's interleaving, made certain: poll sees only the result pipe ready, and reading it
    already returns the last events. The stdout written before them must still be read."""
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.write(out_w, b"42\n")
    os.write(res_w, b'{"e": "load", "status": "ok"}\n{"e": "end", "t": 0, "status": "ok"}\n{"e": "done"}\n')
    for fd in (res_w, out_w, err_w):
        os.close(fd)

    real_poll = server.select.poll

    class ResultsFirst:
        def __init__(self):
            self.poller = real_poll()

        def register(self, fd, events):
            self.poller.register(fd, events)

        def unregister(self, fd):
            self.poller.unregister(fd)

        def poll(self, timeout):
            ready = self.poller.poll(timeout)
            return [r for r in ready if r[0] == res_r] or ready

    fake_select = SimpleNamespace(poll=ResultsFirst, POLLIN=server.select.POLLIN, select=server.select.select)
    monkeypatch.setattr(server, "select", fake_select)
    pid = os.fork()
    if pid == 0:  # stands for the program's process, which has written everything and ends
        os._exit(0)
    limits = SimpleNamespace(**Limits(wall_time=2.0).to_dict())
    try:
        run = server.Server._supervise(
            object.__new__(server.Server), pid, res_r, out_r, err_r, limits, [2.0], True, 0, (4, None)
        )
    finally:
        for fd in (res_r, out_r, err_r):
            os.close(fd)
    assert run["tests"][0]["status"] == "ok" and run["stopped"] is None
    assert run["stdout"] == "42\n"
