"""Running many programs: a pool of sandboxed fork servers, one per core, each replaced if it dies.

Each server has a dispatcher thread here that keeps two programs in flight (the server runs one while
the next waits in its pipe), so no server idles while this process judges a result.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import PperError
from ..tasks import Task
from . import calibration, coverage
from .config import ExecutionConfig
from .judge import judge
from .limits import Limits
from .plan import Plan, build_plan
from .results import RUNTIME_ERROR, ProgramResult, TestResult

Isolation = Literal["auto", "namespaces", "none"]
SANDBOX_UID = 61000  # worker i runs programs as uid SANDBOX_UID + i when pper runs as root
IN_FLIGHT = 2  # programs sent to one server ahead of its answers
KNOWN_SUITES = 1000  # suites a server is known to hold; it holds twice as many (see server.Server._suite)
# The server starts with -I -S (no `site`: 5 MB less to copy on every fork) and gets this process's
# import path, where `site` has already put site-packages, so programs can still import numpy & co.
_BOOT = "import sys; sys.path[:] = {path!r}; from pper.execution.server import main; main(sys.argv[1:])"
_NAMESPACES = ["--fork", "--pid", "--mount-proc", "--mount", "--net", "--kill-child"]


class SandboxError(RuntimeError):
    """A fork server died or stopped answering."""


@functools.cache
def namespaces_available() -> bool:
    """Whether this machine lets pper put workers in new pid, mount and network namespaces."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    cmd = [unshare, *([] if os.geteuid() == 0 else ["--map-root-user"]), *_NAMESPACES, "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _own_process_count() -> int:
    """Processes of this uid now: RLIMIT_NPROC counts them too when pper cannot switch uid."""
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


class Sandbox:
    """One fork server process (see `server`), started in its own namespaces where possible."""

    def __init__(self, index: int, isolation: Isolation = "auto"):
        if isolation == "namespaces" and not namespaces_available():
            raise SandboxError("isolation='namespaces' but `unshare` cannot create namespaces here")
        self.isolated = isolation != "none" and namespaces_available()
        if isolation == "auto" and not self.isolated:
            warnings.warn(
                "sandbox: cannot create namespaces here (util-linux `unshare` missing or not permitted): "
                "programs run without network and filesystem isolation, limited by rlimits only",
                stacklevel=2,
            )
        self.index = index
        self.proc: subprocess.Popen | None = None
        self._known_suites: dict[str, None] = {}  # in the order the server received them
        self._next_id = 0
        self._buffer = bytearray()

    def start(self) -> None:
        root = os.geteuid() == 0
        uid = SANDBOX_UID + self.index if root else -1
        nproc_base = 0 if root else _own_process_count() + 64
        path = [str(Path(__file__).resolve().parents[2])] + [p for p in sys.path if p and os.path.isabs(p)]
        boot = _BOOT.format(path=path)
        hidden = sorted({os.path.expanduser("~"), "/root", "/home"})  # secrets live there: programs see them empty
        cmd = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            boot,
            str(uid),
            "1" if self.isolated else "0",
            str(nproc_base),
            str(2 * KNOWN_SUITES),
            *hidden,
        ]
        if self.isolated:
            cmd = [shutil.which("unshare"), *([] if root else ["--map-root-user"]), *_NAMESPACES, *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}  # nothing secret inherited
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._known_suites, self._buffer = {}, bytearray()
        if self.receive(60.0) != {"ready": True}:
            raise SandboxError(f"sandbox worker {self.index} did not start: {self._stderr()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(
        self, program: str, plan: Plan, limits: Limits, times: tuple[float, ...] | None = None, coverage: bool = False
    ) -> int:
        """Queue one program on the server; returns the request id its answer will carry. `times`: the
        wall-time limit of each test (default: `limits.wall_time` for every test). `coverage`: also report
        the program's lines that ran."""
        if not self.alive:
            self.start()
        self._next_id += 1
        suite = {"key": plan.key}
        if plan.key not in self._known_suites:
            suite["body"] = plan.public
        request = {"id": self._next_id, "program": program, "suite": suite, "limits": limits.to_dict()}
        if times is not None:
            request["times"] = list(times)
        if coverage:
            request["coverage"] = True
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SandboxError(f"sandbox worker {self.index} died: {self._stderr()}") from None
        if "body" in suite:
            self._known_suites[plan.key] = None
            if len(self._known_suites) > KNOWN_SUITES:
                del self._known_suites[next(iter(self._known_suites))]
        return self._next_id

    def receive(self, timeout: float) -> dict:
        """The next JSON line from the server; SandboxError if it ends or says nothing within `timeout`."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        searched = 0  # the buffer holds no newline before this (a long answer is searched once, not per read)
        while (end := self._buffer.find(b"\n", searched)) < 0:
            searched = len(self._buffer)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SandboxError(f"sandbox worker {self.index} stopped answering: {self._stderr()}")
            data = os.read(fd, 1 << 20)
            if not data:
                raise SandboxError(f"sandbox worker {self.index} died: {self._stderr()}")
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            message = json.loads(line)
        except ValueError:
            raise SandboxError(f"sandbox worker {self.index} sent garbage") from None
        if "fatal" in message:
            raise SandboxError(f"sandbox worker {self.index} failed: {message['fatal']}")
        return message

    def _stderr(self) -> str:
        self.stop()
        try:
            return self.proc.stderr.read().decode(errors="replace").strip()[-2000:] or "no message"
        except (OSError, ValueError, AttributeError):
            return "no message"

    def stop(self) -> None:
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self.proc is not None and not self.isolated:  # its directory in the host's /tmp (isolated: a tmpfs)
            shutil.rmtree(f"/tmp/pper-sandbox-{self.proc.pid}", ignore_errors=True)


@dataclass(frozen=True)
class Job:
    task: Task
    program: str


@dataclass
class _Pending:
    future: Future
    plan: Plan
    program: str
    limits: Limits
    times: tuple[float, ...] | None  # per-test wall-time limits; None: limits.wall_time for each
    coverage: bool = False
    tries: int = 0
    request: int = 0

    def budget(self) -> float:
        """Seconds the server may take to answer for this program before it counts as hung: its tests' wall
        times, and a load for each (a test that times out ends its child; the next child loads the program
        again), with a second of slack per test and 30 in all."""
        walls = self.times or (self.limits.wall_time,) * self.plan.num_tests
        allowance = coverage.ALLOWANCE if self.coverage else 0.0
        return (len(walls) + 1) * self.limits.load_time + sum(walls) + len(walls) * (1.0 + allowance) + 30.0


class BaseExecutor:
    """What every back-end shares: test plans, time-limit calibration, and `submit` / `run` / `map` /
    `map_unordered` over the back-end's one primitive, `_submit` (queue one program, get a future of its
    `ProgramResult`). Back-ends: `Executor` (a local pool of sandboxes) and
    `pper.execution.ray_backend.RayExecutor` (pools on the nodes of a Ray cluster).

    With `coverage`, every result also says which lines of the program ran (`ProgramResult.executed_lines`;
    see `pper.execution.coverage`); it is off by default, as it costs time.

    With `calibrate` (the default), a task with a reference solution gets per-test time limits calibrated
    from it (see `calibration`): measured the first time the task is submitted, or for many tasks at once
    (in parallel, one cache file) by `calibrate(tasks)`, and cached under $PPER_CACHE for this machine.
    """

    workers: int  # programs the back-end runs at once

    @property
    def read_ahead(self) -> int:
        """Programs `map` and `map_unordered` keep queued: enough to keep every worker busy."""
        return 4 * self.workers

    def __init__(self, limits: Limits | None = None, calibrate: bool = True, coverage: bool = False):
        self.limits = limits or Limits()
        self.coverage = coverage
        self.calibrating = calibrate
        self._plans: dict[str, Plan] = {}
        self._times: dict[str, calibration.Times] = {}  # task id -> its reference's seconds per test
        self._calibration_lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def _submit(
        self, task: Task, program: str, limits: Limits, times: tuple[float, ...] | None, coverage: bool
    ) -> Future:
        raise NotImplementedError

    def plan(self, task: Task) -> Plan:
        plan = self._plans.get(task.id)
        if plan is None:
            plan = self._plans[task.id] = build_plan(task)
        return plan

    def calibrate(self, tasks: Iterable[Task]) -> dict[str, tuple[float, ...]]:
        """Calibrate the time limits of the `tasks` not calibrated yet, at once: their references run in
        parallel (or their times are read from the cache of this task set). Returns every task's per-test
        wall-time limits. Does nothing but return them when the executor does not calibrate."""
        tasks = list(tasks)
        if self.calibrating:
            with self._calibration_lock:
                todo = [t for t in tasks if t.solutions and t.id not in self._times]
                if todo:
                    self._times.update(calibration.reference_times(todo, self._measure))
        return {t.id: self.time_limits(t) for t in tasks}

    def time_limits(self, task: Task) -> tuple[float, ...]:
        """The wall-time limit of each of `task`'s tests: calibrated from its reference once measured,
        else `limits.wall_time`."""
        times = self._times.get(task.id)
        if times is None:
            return (self.limits.wall_time,) * self.plan(task).num_tests
        return calibration.time_limits(times, self.limits)

    def submit(self, task: Task, program: str, coverage: bool | None = None) -> Future:
        """Queue one program; the future's result is its `ProgramResult`. A task seen for the first time
        is calibrated first (its reference runs before the program is queued)."""
        if self.calibrating and task.solutions and task.id not in self._times:
            self.calibrate([task])
        times = self.time_limits(task) if task.id in self._times else None
        return self._submit(task, program, self.limits, times, self.coverage if coverage is None else coverage)

    def _measure(self, tasks: list[Task]) -> list[ProgramResult]:
        """Run each task's reference under `calibration.measuring_limits` (the calibration's `measure`)."""
        limits = calibration.measuring_limits(self.limits)
        futures = [self._submit(t, t.solutions[0], limits, None, coverage=False) for t in tasks]
        return [f.result() for f in futures]

    def run(self, task: Task, program: str, coverage: bool | None = None) -> ProgramResult:
        """Run one program against its task's tests (`coverage`: as in `map`)."""
        return self.submit(task, program, coverage).result()

    def map(self, jobs: Iterable[Job | tuple[Task, str]], coverage: bool | None = None) -> Iterator[ProgramResult]:
        """Results in job order; jobs are read ahead only as far as the workers can use them. `coverage`:
        collect line coverage (None: as the executor was made)."""
        window: deque[Future] = deque()
        for job in jobs:
            window.append(self.submit(*_unpack(job), coverage))
            if len(window) >= self.read_ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def map_unordered(
        self, jobs: Iterable[Job | tuple[Task, str]], coverage: bool | None = None
    ) -> Iterator[tuple[int, ProgramResult]]:
        """(index of the job, its result) in the order results arrive; jobs are read ahead as in `map`."""
        done: queue.SimpleQueue[tuple[int, Future]] = queue.SimpleQueue()
        queued = 0
        for i, job in enumerate(jobs):
            self.submit(*_unpack(job), coverage).add_done_callback(lambda f, i=i: done.put((i, f)))
            queued += 1
            if queued >= self.read_ahead:
                i, f = done.get()
                queued -= 1
                yield i, f.result()
        for _ in range(queued):
            i, f = done.get()
            yield i, f.result()


def _unpack(job: Job | tuple[Task, str]) -> tuple[Task, str]:
    return (job.task, job.program) if isinstance(job, Job) else job


class Executor(BaseExecutor):
    """Runs programs against their tasks' tests on `workers` sandboxed fork servers on this machine
    (default: all cores); the rest of its API is `BaseExecutor`'s.

    `map(jobs)` yields results in the order of the jobs. A worker that dies is replaced and the programs
    it held are run once more; a program that kills two workers gets `runtime_error` on every test.
    `first_sandbox`: the index of the first server, which decides the uids programs run as when pper runs
    as root (`SANDBOX_UID` + index): pools that share a machine (Ray actors) take disjoint ranges.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        workers: int | None = None,
        isolation: Isolation = "auto",
        calibrate: bool = True,
        coverage: bool = False,
        first_sandbox: int = 0,
    ):
        super().__init__(limits, calibrate, coverage)
        self.workers = workers or os.cpu_count() or 1
        self._jobs: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._sandboxes = [Sandbox(first_sandbox + i, isolation) for i in range(self.workers)]
        self.isolated = all(s.isolated for s in self._sandboxes)
        self._threads = [
            threading.Thread(target=self._dispatch, args=(s,), daemon=True, name=f"pper-sandbox-{s.index}")
            for s in self._sandboxes
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    @classmethod
    def from_config(cls, config: ExecutionConfig, coverage: bool = False) -> Executor:
        """The local executor an `ExecutionConfig` describes (`coverage`: collected when the run uses it);
        `open_executor` picks the back-end the config names."""
        return cls(
            limits=config.limits,
            workers=config.workers,
            isolation=config.isolation,
            calibrate=config.calibrate,
            coverage=coverage,
        )

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _submit(
        self, task: Task, program: str, limits: Limits, times: tuple[float, ...] | None, coverage: bool
    ) -> Future:
        if self._closed:  # no worker would ever answer
            raise PperError(CLOSED)
        future: Future = Future()
        self._jobs.put(_Pending(future, self.plan(task), program, limits, times, coverage))
        return future

    def _dispatch(self, sandbox: Sandbox) -> None:
        """Feed one server: keep IN_FLIGHT programs queued on it, judge its answers, survive its death."""
        in_flight: deque[_Pending] = deque()
        closing = False
        try:
            while True:
                while not closing and len(in_flight) < IN_FLIGHT:
                    try:
                        job = self._jobs.get(block=not in_flight)
                    except queue.Empty:
                        break
                    if job is None:
                        closing = True
                        break
                    if self._send(sandbox, job):
                        in_flight.append(job)
                if not in_flight:
                    if closing:
                        return
                    continue
                job = in_flight[0]
                try:
                    response = sandbox.receive(sum(pending.budget() for pending in in_flight))
                    if response.get("id") != job.request:
                        raise SandboxError(f"sandbox worker {sandbox.index} answered out of order")
                except SandboxError as e:
                    sandbox.stop()
                    retry = list(in_flight)
                    in_flight.clear()
                    for behind in retry[1:]:  # the failure is the answered program's: the ones queued behind
                        behind.tries -= 1  # it are sent again without being charged a try
                    for pending in retry:
                        if pending.tries >= 2:
                            pending.future.set_result(_failed(pending.plan, f"the sandbox failed twice: {e}"))
                        elif self._send(sandbox, pending):
                            in_flight.append(pending)
                    continue
                in_flight.popleft()
                try:
                    job.future.set_result(judge(job.plan, response, job.program))
                except Exception as e:  # a malformed answer: never lose the program
                    job.future.set_result(_failed(job.plan, f"unusable sandbox answer: {e}"))
        finally:
            sandbox.stop()
            for pending in in_flight:
                if not pending.future.done():
                    pending.future.set_result(_failed(pending.plan, "the executor was closed"))

    def _send(self, sandbox: Sandbox, job: _Pending) -> bool:
        """Send a job (starting the server if needed); on failure, resolve it. True if it is in flight."""
        job.tries += 1
        try:
            job.request = sandbox.send(job.program, job.plan, job.limits, job.times, job.coverage)
            return True
        except SandboxError as e:
            sandbox.stop()
            if job.tries >= 2:
                job.future.set_result(_failed(job.plan, f"the sandbox failed twice: {e}"))
                return False
            return self._send(sandbox, job)


CLOSED = "the executor is closed: submit programs, and read map()'s results (it runs lazily), inside its `with` block"


def _failed(plan: Plan, error: str) -> ProgramResult:
    return ProgramResult(tuple(TestResult(RUNTIME_ERROR, error) for _ in plan.checks))


def open_executor(config: ExecutionConfig, coverage: bool = False) -> BaseExecutor:
    """The executor of the back-end `config.backend` names: the local pool, or pools on a Ray cluster
    (`pper.execution.ray_backend`, which needs the `ray` extra)."""
    if config.backend == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor.from_config(config, coverage)
    return Executor.from_config(config, coverage)
