"""The fork server: one per worker, inside its own namespaces, running programs on request.

Started by `pool.Sandbox` as `[unshare ...] python -I -c <boot> UID ISOLATE NPROC_BASE`. With ISOLATE it
runs as pid 1 of a new pid namespace, with a new mount namespace (every mount read-only, private tmpfs on
/tmp, /var/tmp and /dev/shm, replaced by fresh ones before a program runs when the last one left anything
there) and a network namespace without interfaces. It reads one JSON request per line on stdin and answers
one JSON line on stdout. For each program it forks a child that starts a new session, takes the limits and
an empty environment, drops to the unprivileged UID (when started as root), and runs `harness`; stdio tests
get a child each. The server enforces the per-test wall time itself (the request's `times`, one per test,
else `wall_time`), and after each program kills every process left (`kill(-1)` as pid 1), so nothing
outlives its program. A child that dies is labelled by the cause: its CPU limit, the kernel's OOM killer,
else the signal or exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import select
import signal
import sys
import time
from types import SimpleNamespace as Limits  # the fields of limits.Limits, without importing dataclasses
from typing import Any

from . import harness
from .coverage import ALLOWANCE

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MNT_DETACH = 2
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # where programs may write: fresh for every program when isolated
SCRATCH_OPTIONS = "size=256m,mode=1777"  # memory outside a program's RLIMIT_AS: 768 MiB per worker at most
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 38, 47, 4
SECBIT_NOROOT, SECBIT_NOROOT_LOCKED = 1, 2
CAPABILITY_VERSION_3 = 0x20080522
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
# Modules imported before forking, so programs do not pay for importing them: those that HumanEval's and
# MBPP's solutions and tests import (re, math, collections, typing, heapq, itertools, random, ...).
PRELOAD = (
    "array",
    "bisect",
    "cmath",
    "collections",
    "copy",
    "functools",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "string",
    "typing",
)
STDERR_TAIL = 4000
_LIBC = ctypes.CDLL(None, use_errno=True)
_exit = os._exit  # captured before any program runs: a program that patches os._exit cannot stay alive


class Server:
    def __init__(self, uid: int, isolated: bool, nproc_base: int, cache_size: int = 2000):
        self.uid, self.isolated, self.nproc_base, self.cache_size = uid, isolated, nproc_base, cache_size
        self.suites: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        if isolated:  # the private /tmp is the working directory, fresh for every program (see _workdir)
            self.scratch = [point for point in SCRATCH if os.path.isdir(point)]
            self.work = "/tmp"
        else:  # the host's /tmp: only the working directory inside it is emptied between programs
            self.scratch = []
            root = f"/tmp/pper-sandbox-{os.getpid()}"
            os.makedirs(root, mode=0o711, exist_ok=True)
            self.work = os.path.join(root, "work")
        os.environ.clear()  # children inherit this: nothing of the caller's environment
        os.environ.update(SAFE_ENV, HOME=self.work, TMPDIR=self.work)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        try:  # the kernel's count of OOM kills: a child killed while it grows was killed for memory
            self.vmstat: int | None = os.open("/proc/vmstat", os.O_RDONLY)
        except OSError:
            self.vmstat = None

    # -- one request ---------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        limits = Limits(**request["limits"])
        suite, compiled = self._suite(request["suite"])
        n = len(compiled["tests"])
        walls = request.get("times") or [limits.wall_time] * n
        if len(walls) != n or not all(isinstance(w, (int, float)) and w > 0 for w in walls):
            raise ValueError(f"the request's times must be {n} positive numbers, one per test")
        coverage = bool(request.get("coverage"))
        if coverage:  # the tracer's bounded cost, so that coverage changes no verdict
            walls = [w + ALLOWANCE for w in walls]
        start = time.monotonic()
        code, failure = harness.compile_program(request["program"])
        if failure is not None:
            load, tests = failure, []
        elif suite["kind"] == "stdio":
            load, tests = self._stdio(code, suite, limits, walls, self._workdir(), coverage)
        else:
            load, tests = self._functions(code, suite, compiled, limits, walls, self._workdir(), coverage)
        answer = {"id": request["id"], "load": load, "tests": tests, "time": time.monotonic() - start}
        if coverage:
            answer["coverage"] = True
        if self.isolated:  # what the program wrote to its scratch space is memory: free it now, not next program
            self._workdir()
        return answer

    def _workdir(self) -> str:
        """An empty working directory, with empty scratch space.

        Isolated, the working directory is /tmp: /tmp, /var/tmp and /dev/shm are this server's own tmpfs,
        and each one the last program left anything in (or changed) is replaced by a fresh tmpfs, so no
        program sees what an earlier one wrote (checking costs three directory reads). Without isolation,
        only the working directory is emptied (the host's /tmp is shared: see docs/sandbox.md).
        """
        if self.isolated:
            for point in self.scratch:
                st = os.stat(point)
                if st.st_mode & 0o7777 != 0o1777 or st.st_uid != 0 or os.listdir(point):
                    _fresh_tmpfs(point)
            return self.work
        workdir = self.work
        try:
            if not os.listdir(workdir) and os.stat(workdir).st_mode & 0o7777 == 0o700:
                return workdir
            _remove_tree(workdir)
        except FileNotFoundError:
            pass
        os.mkdir(workdir, 0o700)
        if self.uid >= 0:
            os.chown(workdir, self.uid, self.uid)
        return workdir

    def _suite(self, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The suite sent with this request, or cached from an earlier one. The cache drops the suite
        received longest ago; the pool keeps track of half as many, so it never omits a dropped one."""
        if "body" in spec:
            self.suites.pop(spec["key"], None)  # a suite sent again counts as received now
            self.suites[spec["key"]] = (spec["body"], _compile_suite(spec["body"]))
            if len(self.suites) > self.cache_size:
                self.suites.pop(next(iter(self.suites)))
        return self.suites[spec["key"]]

    def _functions(self, code, suite, compiled, limits, walls, workdir, coverage):
        n = len(compiled["tests"])
        tests: list[dict[str, Any] | None] = [None] * n
        first, load = 0, None
        while first < n:
            run = self._run_child(
                lambda f=first: harness.run_functions(code, suite, compiled, f, coverage),
                limits,
                walls[first:],
                workdir,
                None,
                first,
            )
            if run["load"]["status"] != "ok":
                load = run["load"]
                break
            if "lines" in run["load"]:  # lines that ran at load: reported with the load of the first child
                load = load or {"status": "ok"}
                load["lines"] = sorted(set(load.get("lines", ())) | set(run["load"]["lines"]))
                if run["load"].get("partial"):
                    load["partial"] = True
            tests[first : first + len(run["tests"])] = run["tests"]
            first += len(run["tests"])
            if run["stopped"] is not None and first < n:  # the test that ended the child; go on with the next
                tests[first] = run["stopped"]
                first += 1
        if load is None or load["status"] == "ok":
            return load or {"status": "ok"}, tests
        return load, []

    def _stdio(self, code, suite, limits, walls, workdir, coverage):
        tests = []
        for text, wall in zip(suite["inputs"], walls, strict=True):
            path = os.path.join(workdir, ".stdin")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            run = self._run_child(
                lambda: harness.run_stdio(code, coverage), limits, [wall], workdir, path, 0, capture=True
            )
            with contextlib.suppress(FileNotFoundError):  # the program may have removed it
                os.unlink(path)
            if run["load"]["status"] != "ok":
                return run["load"], []
            result = run["stopped"] or (run["tests"][0] if run["tests"] else {"status": "error", "error": "no result"})
            if result["status"] == "ok":
                result["stdout"] = run["stdout"]
            tests.append(result)
        return {"status": "ok"}, tests

    # -- one child -----------------------------------------------------------------------------

    def _run_child(
        self,
        body,
        limits: Limits,
        walls: list[float],
        workdir: str,
        stdin_path: str | None,
        first: int,
        capture: bool = False,
    ) -> dict[str, Any]:
        """Fork a child running `body` (the tests from `first` on, whose wall times are `walls`), supervise
        it (see `_supervise`), then kill what is left."""
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin_fd = os.open(stdin_path, os.O_RDONLY) if stdin_path else self.devnull
        cpu = cpu_seconds(limits, walls)
        ooms = _oom_kills(self.vmstat)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                self._enter_sandbox(limits, cpu, workdir, stdin_fd, out_w, err_w, res_w)
                body()
                code = 0
            finally:
                _exit(code)
        for fd in (res_w, out_w, err_w) + ((stdin_fd,) if stdin_path else ()):
            os.close(fd)
        try:
            return self._supervise(pid, res_r, out_r, err_r, limits, walls, capture, first, (cpu, ooms))
        finally:
            for fd in (res_r, out_r, err_r):
                os.close(fd)
            self._kill_all(pid)

    def _enter_sandbox(self, limits, cpu, workdir, stdin_fd, out_w, err_w, res_w) -> None:
        os.setsid()
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, harness.RESULT_FD)
        os.closerange(harness.RESULT_FD + 1, 1 << 20)  # the server's request and response pipes among them
        os.chdir(workdir)
        for limit, value in (
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            (resource.RLIMIT_AS, (limits.memory, limits.memory)),
            (resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size)),
            (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
            (resource.RLIMIT_NPROC, (self.nproc_base + limits.max_processes,) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
        ):
            resource.setrlimit(limit, value)
        if self.uid >= 0:
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)
        else:  # uid 0 of the worker's user namespace (pper not run as root): no capabilities in it either
            _drop_capabilities()
        _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no exec (setuid, file capabilities) gains privileges
        # sys.stdin/stdout/stderr now read and write the new descriptors 0-2; the server never writes to
        # them, so they carry no buffered data of its own.

    def _supervise(self, pid, res_r, out_r, err_r, limits: Limits, walls, capture, first, before) -> dict[str, Any]:
        """Read the child's events and output until it is done, stops or runs out of time.

        Returns the load status, the results of the tests that ended, `stopped` (the result of the test
        that was running when the child ended early) and the captured stdout. Test numbers start at
        `first`; test `first + i` may take `walls[i]` seconds. `before`: the child's CPU limit and the
        kernel's OOM-kill count when it was forked, to tell why it died.
        """
        poller = select.poll()
        for fd in (res_r, out_r, err_r):
            poller.register(fd, select.POLLIN)
        open_fds = {res_r, out_r, err_r}
        deadline = time.monotonic() + limits.load_time
        pending, output, reported = b"", _Output(capture, limits.output_size), 0
        load: dict[str, Any] | None = None
        tests: list[dict[str, Any]] = []
        current: int | None = None  # the test running now: the one after the last that ended
        started = 0.0
        stopped: dict[str, Any] | None = None
        done = False
        while not done and res_r in open_fds:
            wait = deadline - time.monotonic()
            if wait <= 0:
                stopped = {"status": "timeout"}
                break
            for fd, _ in poller.poll(wait * 1000):
                data = os.read(fd, 1 << 16)
                if not data:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif fd == err_r or fd == out_r:
                    if output.add(data, fd == err_r):
                        stopped = {"status": "output"}
                        done = True
                else:
                    pending += data
                    reported += len(data)  # the result channel counts against the output limit, in all
                    if reported > limits.output_size:
                        stopped = {"status": "output"}
                        done = True
                        break
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if done:  # nothing after the end, or after a forged event, counts (same read or not)
                            break
                        event = _event(line)
                        kind = event.get("e")
                        now = time.monotonic()
                        if kind == "load" and load is None:
                            load = _reported(event, ("error", "lines", "partial"))
                            current, started = 0, now
                            deadline = now + (walls[0] if load["status"] == "ok" else 1.0)
                        elif kind == "end" and current is not None and event.get("t") == first + current:
                            result = _reported(event, ("error", "values", "lines", "partial"))
                            result["time"] = round(now - started, 6)
                            tests.append(result)
                            current, started = current + 1, now
                            deadline = now + (walls[current] if current < len(walls) else limits.wall_time)
                        elif kind == "done":
                            done = True
                        else:
                            stopped = {"status": "error", "error": "the program wrote to the sandbox's result channel"}
                            done = True
        grace = 1.0 if done and stopped is None else 0.2 if stopped is None else 0.0
        status, cpu_used, killed = self._reap_child(pid, grace)
        # poll may report only the result pipe, whose read then already holds the last events: what the
        # child wrote to stdout and stderr before them is still in those pipes, unread.
        for fd in (out_r, err_r):
            while fd in open_fds and not output.over and (data := _read_now(fd)):
                if output.add(data, fd == err_r) and stopped is None:
                    stopped = {"status": "output"}
        if not done and stopped is None:  # the child ended without finishing: why?
            stopped = (
                {"status": "error", "error": "the program closed the sandbox's result channel"}
                if killed
                else _death(status, output.stderr, cpu_used, before[0], before[1], _oom_kills(self.vmstat))
            )
        captured = b"".join(output.stdout).decode("utf-8", errors="replace")
        if load is None:  # it never got to run a test: the failure is the program's load
            load = stopped or {"status": "error", "error": "the program ended before it was loaded"}
            return {"load": load, "tests": [], "stopped": None, "stdout": captured}
        if stopped is not None:  # the result of the test that was running when it ended
            stopped["time"] = round(time.monotonic() - started, 6)
            if stopped["status"] == "error" and "error" not in stopped and output.stderr:
                stopped["error"] = output.stderr.decode(errors="replace").strip().splitlines()[-1][:2000]
        return {"load": load, "tests": tests, "stopped": stopped, "stdout": captured}

    def _reap_child(self, pid: int, grace: float) -> tuple[int, float, bool]:
        """Wait up to `grace` seconds for the child to exit, then kill it; (wait status, CPU seconds it
        used, killed here)."""
        if grace > 0:
            pidfd = os.pidfd_open(pid)
            try:
                select.select([pidfd], [], [], grace)
            finally:
                os.close(pidfd)
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                return status, usage.ru_utime + usage.ru_stime, False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status, usage = os.wait4(pid, 0)
        return status, usage.ru_utime + usage.ru_stime, True

    def _kill_all(self, pid: int) -> None:
        """Kill every process the program left behind, and reap them."""
        if self.isolated:  # pid 1 of the namespace: -1 reaches every other process in it
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.uid >= 0:  # every process of the sandbox uid, even ones that left the session
                helper = os.fork()
                if helper == 0:
                    try:
                        os.setuid(self.uid)
                        os.kill(-1, signal.SIGKILL)
                    finally:
                        os._exit(0)
        while True:
            if not self.isolated:  # orphans that left the session (and, not root, the uid): reparented here
                for child in _children():
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break


def _children() -> list[int]:
    """This process's children: as a subreaper, every orphan of the programs it ran ends up among them."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: look through every process
        children = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if entry.isdigit() and int(f.read().rsplit(b")", 1)[1].split()[1]) == me:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
        return children


class _Output:
    """A child's stdout (kept when captured) and the tail of its stderr, counted against one limit."""

    def __init__(self, capture: bool, limit: int):
        self.capture, self.limit = capture, limit
        self.stdout: list[bytes] = []
        self.stderr, self.size, self.over = b"", 0, False

    def add(self, data: bytes, is_stderr: bool) -> bool:
        """Take `data`; True once the output passes the limit."""
        self.size += len(data)
        if is_stderr:
            self.stderr = (self.stderr + data)[-STDERR_TAIL:]
        elif self.capture:
            self.stdout.append(data)
        self.over = self.size > self.limit
        return self.over


def _remove_tree(path: str) -> None:
    """rm -rf that never follows a symbolic link (a program may leave one pointing anywhere)."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
    os.rmdir(path)


def _read_now(fd: int) -> bytes:
    """What the pipe holds now (at most 64 KiB), without waiting: b"" when it is empty or closed."""
    if not select.select([fd], [], [], 0)[0]:
        return b""
    return os.read(fd, 1 << 16)


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return {"e": "garbage"}
    return event if isinstance(event, dict) else {"e": "garbage"}


CHILD_STATUSES = ("ok", "error", "fail", "memory", "unencodable", "output", "syntax_error")  # what harness reports
MAX_ERROR = 2000  # characters of an error text passed on


def _reported(event: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The event's status and its fields `keys`, each of the type the judge reads (the child is untrusted and may
    write anything to its result channel): a status outside `CHILD_STATUSES` is "error", an error text a string
    of at most `MAX_ERROR` characters, `values` a string, `lines` a list (`coverage.clean_lines` reads it),
    `partial` a bool; anything else is dropped."""
    out: dict[str, Any] = {}
    for key in keys:
        if key not in event:
            continue
        value = event[key]
        if key == "error":
            out[key] = value[:MAX_ERROR] if isinstance(value, str) else "the program reported a malformed error"
        elif key == "values" and isinstance(value, str):
            out[key] = value
        elif key == "lines" and isinstance(value, list):
            out[key] = value
        elif key == "partial":
            out[key] = value is True
    status = event.get("status")
    if isinstance(status, str) and status in CHILD_STATUSES:
        out["status"] = status
    else:  # missing, or not one the harness reports
        out["status"] = "error"
        out.setdefault("error", "the program wrote a malformed event to the sandbox's result channel")
    return out


def cpu_seconds(limits: Limits, walls: list[float]) -> int:
    """The child's RLIMIT_CPU in seconds (soft; the hard limit is one more): the CPU time of the tests it
    runs, each `cpu_time` scaled as its wall time is (cpu_time x wall / wall_time: a calibrated test
    that may take longer may use as much more CPU), plus `load_time`, rounded up."""
    return int(sum(limits.cpu_time * wall / limits.wall_time for wall in walls) + limits.load_time) + 1


def _oom_kills(fd: int | None) -> int | None:
    """The kernel's count of processes killed by the out-of-memory killer (`oom_kill` in /proc/vmstat,
    global and cgroup OOMs alike); None where it cannot be read."""
    if fd is None:
        return None
    try:
        data = os.pread(fd, 1 << 16, 0)
        start = data.index(b"\noom_kill ") + 10
        return int(data[start : data.index(b"\n", start)])
    except (OSError, ValueError):
        return None


def _death(
    status: int,
    stderr: bytes,
    cpu_used: float = 0.0,
    cpu_limit: float = float("inf"),
    ooms_before: int | None = None,
    ooms_after: int | None = None,
) -> dict[str, Any]:
    """Why a child ended early, from its wait status, the CPU seconds it used against its RLIMIT_CPU, and
    the kernel's OOM-kill count before and after it ran.

    SIGXCPU, or SIGKILL once the CPU limit is spent (the kernel's hard limit): timeout. SIGKILL while the
    OOM count grew: memory_limit. Any other signal, SIGKILL included (a program may kill itself): a runtime
    error naming it. (The wall-time limit and pper's own kills are labelled before this is asked.)
    """
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"status": "timeout"}
        if sig == signal.SIGKILL and cpu_used >= cpu_limit:
            return {"status": "timeout", "error": "CPU time limit exceeded (killed by SIGKILL)"}
        if sig == signal.SIGXFSZ:
            return {"status": "error", "error": "file size limit exceeded"}
        if sig == signal.SIGKILL and ooms_before is not None and ooms_after is not None and ooms_after > ooms_before:
            return {"status": "memory", "error": "killed by the kernel's out-of-memory killer (SIGKILL)"}
        return {"status": "error", "error": f"killed by signal {signal.Signals(sig).name}"}
    code = os.WEXITSTATUS(status)
    tail = stderr.decode(errors="replace").strip().splitlines()
    detail = f": {tail[-1][:500]}" if tail else ""
    return {"status": "error", "error": f"the program exited with status {code}{detail}"}


def _compile_suite(suite: dict[str, Any]) -> dict[str, Any]:
    if suite["kind"] == "assert":
        tests = []
        for test in suite["tests"]:
            if "code" in test:
                tests.append(("code", compile(test["code"], "<test>", "exec", dont_inherit=True)))
            else:
                prelude = compile(test["prelude"], "<test>", "exec", dont_inherit=True) if test["prelude"] else None
                tests.append(
                    ("calls", (prelude, [compile(c, "<test>", "eval", dont_inherit=True) for c in test["calls"]]))
                )
        return {"setup": compile(suite["setup"], "<setup>", "exec", dont_inherit=True), "tests": tests}
    if suite["kind"] == "call":
        return {"tests": list(range(len(suite["args"])))}
    return {"tests": list(range(len(suite["inputs"])))}


def _drop_capabilities() -> None:
    """Clear the effective, permitted, inheritable and ambient capabilities of this process. Without this a
    program run as uid 0 of the worker's user namespace could mount and unmount there: uncover the host's
    filesystem, remount it writable and write wherever the user running pper can."""
    _LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two sets of (effective, permitted, inheritable): all empty
    if _LIBC.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "cannot drop capabilities")


def _no_root_privileges() -> None:
    """For a server that stays uid 0 of its user namespace: uid 0 gets no capabilities from exec, and none
    can be raised again (an empty bounding set). Where the server has no capabilities, nothing changes."""
    _LIBC.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0)
    for cap in range(64):  # past the kernel's last capability, the call fails harmlessly
        _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _LIBC.mount(
        source and source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()
    ):
        raise OSError(ctypes.get_errno(), f"mount {source} on {target} failed")


def _fresh_tmpfs(point: str) -> None:
    """Replace the tmpfs on `point` (and everything mounted under it) by an empty one. The old one is
    detached, and freed once no process uses it (none does: every program's processes are dead)."""
    _LIBC.umount2(point.encode(), MNT_DETACH)  # fails harmlessly where nothing is mounted on `point`
    _mount("tmpfs", point, "tmpfs", MS_NOSUID | MS_NODEV, SCRATCH_OPTIONS)


def _isolate_filesystem(exposed: list[str], hidden: list[str]) -> None:
    """Private tmpfs where programs may write; `hidden` directories (home directories) covered by an empty
    tmpfs; the `exposed` paths (the Python installation) reachable by the sandbox uid; every mount
    read-only. Runs as root of a new mount namespace, so the host sees none of it."""
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, SCRATCH_OPTIONS)  # where _cover stages its mounts
    _cover(exposed, hidden, _mount)
    with open("/proc/self/mountinfo") as f:
        mounts = [(line.split()[4], line.split()[5].split(",")) for line in f]
    for point, options in mounts:
        if point.startswith(("/proc", "/sys", "/dev")) or point in SCRATCH:
            continue  # the program's scratch space stays writable
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC)):
            if name in options:  # flags locked by the kernel must be kept
                flags |= bit
        _LIBC.mount(None, point.encode(), None, flags, None)
    for point in SCRATCH:  # empty scratch space, without the staging directories
        if os.path.isdir(point):
            _fresh_tmpfs(point)


def _cover(exposed: list[str], hidden: list[str], mount) -> None:
    """Cover each `hidden` directory, and each directory the sandbox uid may not traverse on the way to an
    `exposed` path (as /root, mode 700, on the way to /root/.pyenv), with an empty tmpfs (mode 755); then
    bind-mount the exposed paths inside it back in place. Everything else in them stays out of reach."""
    hidden_set = {os.path.realpath(h) for h in hidden if os.path.isdir(h) and os.path.realpath(h) != "/"}
    covers: dict[str, list[str]] = {h: [] for h in hidden_set}
    for path in sorted({os.path.realpath(p) for p in exposed if os.path.exists(p)}):
        parts = path.split("/")
        for i in range(2, len(parts)):
            ancestor = "/".join(parts[:i])
            if ancestor in hidden_set or not os.stat(ancestor).st_mode & 0o001:
                covers.setdefault(ancestor, []).append(path)
                break
    for n, (cover, inside) in enumerate(sorted(covers.items())):
        if any(cover.startswith(other + "/") for other in covers):
            continue  # inside another cover: handled with it
        inside = [p for p in inside if not any(p.startswith(q + "/") for q in inside if q != p)]
        staged = []
        for i, path in enumerate(inside):
            stage = f"/tmp/.pper-stage-{n}-{i}"
            if os.path.isdir(path):
                os.mkdir(stage)
            else:
                open(stage, "w").close()
            mount(path, stage, None, MS_BIND | MS_REC)
            staged.append((stage, path))
        mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for stage, path in staged:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            if os.path.isdir(stage):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:
                open(path, "w").close()
            mount(stage, path, None, MS_BIND | MS_REC)


def main(argv: list[str]) -> None:
    uid, isolated, nproc_base, cache_size, hidden = int(argv[0]), argv[1] == "1", int(argv[2]), int(argv[3]), argv[4:]
    if isolated:
        _isolate_filesystem([sys.prefix, sys.base_prefix, sys.exec_prefix, *filter(None, sys.path)], hidden)
    else:
        _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if uid < 0:
        _no_root_privileges()
    for name in PRELOAD:
        __import__(name)
    gc.freeze()  # children then never touch (and copy) the server's objects when they collect garbage
    requests = os.fdopen(os.dup(0), "rb")
    responses = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    server = Server(uid, isolated, nproc_base, cache_size)
    os.write(responses, b'{"ready": true}\n')
    for line in requests:
        try:
            response = server.handle(json.loads(line))
        except Exception as e:  # a bug here must not take the worker down silently
            response = {"id": None, "fatal": f"{type(e).__name__}: {e}"}
        os.write(responses, (json.dumps(response) + "\n").encode())


if __name__ == "__main__":
    main(sys.argv[1:])
