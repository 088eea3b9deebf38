"""Running many programs: a pool of sandboxed fork servers, one per core, each replaced if it dies."""

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
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..tasks import Task
from .judge import judge
from .limits import Limits
from .plan import Plan, build_plan
from .results import RUNTIME_ERROR, ProgramResult, TestResult

Isolation = Literal["auto", "namespaces", "none"]
SANDBOX_UID = 61000  # worker i runs programs as uid SANDBOX_UID + i when pper runs as root
_BOOT = "import sys; sys.path.insert(0, {path!r}); from pper.execution.server import main; main(sys.argv[1:])"
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
        self.known_suites: set[str] = set()
        self.proc: subprocess.Popen | None = None
        self._next_id = 0
        self._buffer = b""

    def start(self) -> None:
        root = os.geteuid() == 0
        uid = SANDBOX_UID + self.index if root else -1
        nproc_base = 0 if root else _own_process_count() + 64
        boot = _BOOT.format(path=str(Path(__file__).resolve().parents[2]))
        cmd = [sys.executable, "-I", "-c", boot, str(uid), "1" if self.isolated else "0", str(nproc_base)]
        if self.isolated:
            cmd = [shutil.which("unshare"), *([] if root else ["--map-root-user"]), *_NAMESPACES, *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}  # nothing secret inherited
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
        self.known_suites = set()
        self._buffer = b""
        ready = self._read_line(60.0)
        if ready != {"ready": True}:
            raise SandboxError(f"sandbox worker {self.index} did not start: {self._stderr()}")

    def run(self, program: str, plan: Plan, limits: Limits) -> dict:
        """Send one program; return the server's raw response."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self._next_id += 1
        suite = {"key": plan.key}
        if plan.key not in self.known_suites:
            suite["body"] = plan.public
        request = {"id": self._next_id, "program": program, "suite": suite, "limits": limits.to_dict()}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SandboxError(f"sandbox worker {self.index} died: {self._stderr()}") from None
        self.known_suites.add(plan.key)
        budget = limits.load_time + plan.num_tests * (limits.wall_time + 1.0) + 30.0
        response = self._read_line(budget)
        if response is None or response.get("id") != self._next_id:
            detail = (response or {}).get("fatal") or self._stderr()
            self.stop()
            raise SandboxError(f"sandbox worker {self.index} failed: {detail}")
        return response

    def _read_line(self, timeout: float) -> dict | None:
        """The next JSON line from the server, or None if it ends or says nothing within `timeout`."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            data = os.read(fd, 1 << 20)
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def _stderr(self) -> str:
        self.stop()
        try:
            return self.proc.stderr.read().decode(errors="replace").strip()[-2000:] or "no message"
        except (OSError, ValueError):
            return "no message"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


@dataclass(frozen=True)
class Job:
    task: Task
    program: str


class Executor:
    """Runs programs against their tasks' tests on `workers` sandboxed fork servers (default: all cores).

    `map(jobs)` yields results in the order of the jobs. A worker that dies is replaced and its program
    run once more; a program that kills two workers gets `runtime_error` on every test.
    """

    def __init__(self, limits: Limits | None = None, workers: int | None = None, isolation: Isolation = "auto"):
        self.limits = limits or Limits()
        self.workers = workers or os.cpu_count() or 1
        self.isolation = isolation
        self._plans: dict[str, Plan] = {}
        self._sandboxes: queue.Queue[Sandbox] = queue.Queue()
        for i in range(self.workers):
            self._sandboxes.put(Sandbox(i, isolation))

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while not self._sandboxes.empty():
            self._sandboxes.get().stop()

    def plan(self, task: Task) -> Plan:
        plan = self._plans.get(task.id)
        if plan is None:
            plan = self._plans[task.id] = build_plan(task)
        return plan

    def run(self, task: Task, program: str) -> ProgramResult:
        """Run one program against its task's tests."""
        plan = self.plan(task)
        sandbox = self._sandboxes.get()
        try:
            for _attempt in (1, 2):
                try:
                    return judge(plan, sandbox.run(program, plan, self.limits))
                except SandboxError as e:
                    error = str(e)
            return ProgramResult(
                tuple(TestResult(RUNTIME_ERROR, f"the sandbox failed twice: {error}") for _ in plan.checks)
            )
        finally:
            self._sandboxes.put(sandbox)

    def map(self, jobs: Iterable[Job | tuple[Task, str]]) -> Iterator[ProgramResult]:
        """Results in job order, computed `workers` at a time."""
        window: deque[Future[ProgramResult]] = deque()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pper-sandbox") as threads:
            for job in jobs:
                task, program = (job.task, job.program) if isinstance(job, Job) else job
                window.append(threads.submit(self.run, task, program))
                if len(window) >= 4 * self.workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
