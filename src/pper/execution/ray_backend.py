"""The Ray back-end of the testing phase: pper's own sandbox pool on every node of a Ray cluster.

The driver (the process that made the `RayExecutor`) keeps what every back-end keeps (test plans,
calibration, one future per program: `BaseExecutor`) and sends programs, `ray.batch` at a time, to
`SandboxPool` actors: `ray.actors_per_node` on each node with CPUs, each a local `Executor` with the run's
limits and isolation (`execution.isolation`). Each pool holds two requests at once, so it never idles while
the driver collects an answer. Tasks travel once per node, through Ray's object store.

Isolation: with "namespaces" a pool on a node that cannot make namespaces refuses to start and the executor
raises, naming the node; with "auto" each pool reports what it got, and the driver prints it per node and
warns where programs run without namespaces.

Faults: a request fails when its pool dies (its process killed, its node lost) or does not answer within the
sum of its programs' budgets and those of the other request it shares the pool with. Its programs go back, first
in line, to be sent **alone** to a live pool, so one program that kills its pool takes no other down with it;
only a try alone counts, and a program that failed alone `ray.max_tries` times gets `runtime_error` on every
test, as a program that kills two local sandboxes does. The failed pool is restarted by Ray (`max_restarts`)
and takes requests again once it answers; one that does not answer within `START_TIMEOUT` is replaced (on its
node, else anywhere), and a slot that fails `MAX_FAILURES` times in a row is given up. Results exist only for a
request that finished, so each program's result is set once: none lost, none twice. When no pool is left, the
waiting programs' futures raise `SandboxError`, and so does every later submission: a run stops with what it
committed and resumes later.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..cluster import connect, ray_module, reason
from ..errors import PperError
from ..tasks import Task
from .config import ExecutionConfig, RayConfig
from .limits import Limits
from .pool import CLOSED, BaseExecutor, Executor, Isolation, SandboxError, _failed, _Pending
from .results import ProgramResult

IN_FLIGHT = 2  # requests a pool holds at once
POLL = 0.05  # seconds the dispatcher waits for an answer before it looks at its queue again
START_TIMEOUT = 300.0  # seconds a pool may take to start (Ray may have to start a worker process first)
MAX_FAILURES = 5  # failed requests or restarts of one pool slot in a row before it is given up


class SandboxPool:
    """A Ray actor (made with `ray.remote` when the back-end starts): a local `Executor` on its node."""

    def __init__(self, limits: Limits, workers: int | None, isolation: Isolation, first_sandbox: int):
        import ray

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
            self.executor = Executor(limits, workers or cpus, isolation, calibrate=False, first_sandbox=first_sandbox)
        self.notes = [str(w.message) for w in caught]
        self.tasks: dict[str, Task] = {}

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "workers": self.executor.workers,
            "isolated": self.executor.isolated,
            "notes": self.notes,
        }

    def run(self, tasks: dict[str, Any], jobs: list[tuple[str, str, Limits, Any, bool]]) -> list[ProgramResult]:
        """Results of `jobs` (task id, program, limits, per-test times, coverage); `tasks`: task id -> an
        object reference of the task, fetched once per pool."""
        import ray

        missing = [tid for tid in tasks if tid not in self.tasks]
        for tid, task in zip(missing, ray.get([tasks[tid] for tid in missing]), strict=True):
            self.tasks[tid] = task
        futures = [self.executor._submit(self.tasks[tid], p, lim, times, cov) for tid, p, lim, times, cov in jobs]
        return [f.result() for f in futures]


@dataclass
class _Request:
    jobs: list[tuple[_Pending, Task]]
    budget: float  # seconds the pool may take for these programs alone
    deadline: float


@dataclass
class _Actor:
    handle: Any
    node: str
    first_sandbox: int  # its sandboxes' indices (uids as root) start here, disjoint from its node's other pools
    ready: bool = False
    ping: Any = None  # the `info` call in flight while the actor (re)starts
    ping_deadline: float = 0.0
    failures: int = 0  # failed requests and restarts in a row; at MAX_FAILURES the slot is given up
    gone: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    requests: dict[Any, _Request] = field(default_factory=dict)  # object ref -> what it carries


class RayExecutor(BaseExecutor):
    """Runs programs on sandbox pools on the nodes of a Ray cluster; the API is `BaseExecutor`'s and the
    verdicts are the local `Executor`'s (see the module's docstring for placement and faults)."""

    def __init__(
        self,
        limits: Limits | None = None,
        isolation: Isolation = "auto",
        calibrate: bool = True,
        coverage: bool = False,
        ray_config: RayConfig | None = None,
    ):
        super().__init__(limits, calibrate, coverage)
        self.config = ray_config or RayConfig()
        self.isolation = isolation
        self._ray = ray_module()
        self._started_ray = connect(self.config.address)
        self._queue: deque[tuple[_Pending, Task]] = deque()
        self._suspects: deque[tuple[_Pending, Task]] = deque()  # from failed requests: each is sent alone
        self._lock = threading.Condition()
        self._closing = False
        self._dead: str | None = None  # why no program can run any more
        self._task_refs: dict[str, Any] = {}
        self._actors: list[_Actor] = []
        self.resent = 0  # programs sent again after the pool that held them failed
        try:
            self._start_pools()
        except BaseException:
            self._shutdown()
            raise
        self.workers = sum(a.info["workers"] for a in self._actors)
        self._thread = threading.Thread(target=self._dispatch, daemon=True, name="pper-ray-dispatch")
        self._thread.start()

    @classmethod
    def from_config(cls, config: ExecutionConfig, coverage: bool = False) -> RayExecutor:
        return cls(config.limits, config.isolation, config.calibrate, coverage, config.ray)

    @property
    def read_ahead(self) -> int:
        """Every pool's two requests full, and one more batch each waiting."""
        return max(4 * self.workers, (IN_FLIGHT + 1) * self.config.batch * len(self._actors))

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """What each pool reported when it last started: node id, host, pid, sandboxes, isolated."""
        return [dict(a.info) for a in self._actors]

    def _start_pools(self) -> None:
        ray, c = self._ray, self.config
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        if not nodes:
            raise PperError("the Ray cluster has no live node with CPUs to run sandboxes on")
        for node in nodes:
            cpus = int(node["Resources"]["CPU"])
            workers = c.workers or max(1, cpus // c.actors_per_node)
            for i in range(c.actors_per_node):
                actor = _Actor(None, node["NodeID"], i * workers)
                actor.handle = self._new_pool(actor, workers, soft=False)
                self._actors.append(actor)
        infos = [a.handle.info.remote() for a in self._actors]
        for actor, ref in zip(self._actors, infos, strict=True):
            try:
                actor.info = ray.get(ref, timeout=START_TIMEOUT)
            except Exception as e:
                raise PperError(
                    f"the sandbox pool on Ray node {actor.node} did not start: {reason(e)}"
                    + (
                        " (execution.isolation 'namespaces' needs util-linux `unshare` allowed on every node)"
                        if self.isolation == "namespaces"
                        else ""
                    )
                ) from None
            actor.ready = True
        self._report()

    def _new_pool(self, actor: _Actor, workers: int | None, soft: bool) -> Any:
        """A `SandboxPool` actor for `actor`'s slot: on its node (`soft`: elsewhere if that node is gone)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return (
            self._ray.remote(SandboxPool)
            .options(
                num_cpus=0,  # the sandboxes are its subprocesses: `workers` says how many CPUs it uses
                max_restarts=-1,
                max_task_retries=0,  # a failed request is sent again by the driver, to a live pool
                max_concurrency=IN_FLIGHT,  # its requests feed one sandbox queue: no idling between them
                scheduling_strategy=NodeAffinitySchedulingStrategy(actor.node, soft=soft),
            )
            .remote(self.limits, workers, self.isolation, actor.first_sandbox)
        )

    def _report(self, actors: list[_Actor] | None = None) -> None:
        """Print each node's pools and isolation (stderr); warn where programs run without namespaces."""
        by_node: dict[str, list[dict]] = {}
        for a in self._actors if actors is None else actors:
            by_node.setdefault(a.info["node"], []).append(a.info)
        for node, infos in by_node.items():
            isolated = all(i["isolated"] for i in infos)
            print(
                f"pper ray: node {infos[0]['host']} ({node[:12]}): {len(infos)} pool(s) x "
                f"{infos[0]['workers']} sandboxes, isolation: {'namespaces' if isolated else 'none (rlimits only)'}",
                file=sys.stderr,
            )
            if not isolated and self.isolation == "auto":
                warnings.warn(
                    f"sandbox: Ray node {infos[0]['host']} cannot create namespaces: programs run there without "
                    "network and filesystem isolation, limited by rlimits only",
                    stacklevel=3,
                )

    # -- the driver's side --------------------------------------------------------------------------

    def _submit(
        self, task: Task, program: str, limits: Limits, times: tuple[float, ...] | None, coverage: bool
    ) -> Future:
        future: Future = Future()
        pending = _Pending(future, self.plan(task), program, limits, times, coverage)
        with self._lock:
            if self._dead is not None:
                future.set_exception(SandboxError(self._dead))
                return future
            if self._closing:
                raise PperError(CLOSED)
            self._queue.append((pending, task))
            self._lock.notify()
        return future

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()
        self._shutdown()

    def _shutdown(self) -> None:
        for actor in self._actors:
            self._kill(actor.handle)
        self._actors = []
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def _kill(self, handle: Any, restart: bool = False) -> None:
        try:
            self._ray.kill(handle, no_restart=not restart)
        except Exception:  # already gone
            pass

    def _dispatch(self) -> None:
        """Send queued programs to pools with room, collect answers, resend what a failed pool held."""
        try:
            while True:
                with self._lock:
                    idle = not any(a.requests or a.ping for a in self._actors)
                    if idle and not self._queue and not self._suspects:
                        if self._closing:
                            return
                        self._lock.wait(POLL)
                        continue
                if all(a.gone for a in self._actors):
                    self._fail_all(f"no Ray sandbox pool is left: each failed {MAX_FAILURES} times in a row")
                    return
                self._send_requests()
                refs = [ref for a in self._actors for ref in a.requests] + [a.ping for a in self._actors if a.ping]
                if refs:
                    ready, _ = self._ray.wait(refs, num_returns=1, timeout=POLL)
                    for ref in ready:
                        self._collect(ref)
                else:
                    time.sleep(POLL)
                self._expire()
        except Exception as e:  # never leave a future waiting
            self._fail_all(f"the Ray dispatcher failed: {e!r}")

    def _next_batch(self) -> list[tuple[_Pending, Task]]:
        """A program from a failed request alone, else up to `batch` programs from the queue."""
        with self._lock:
            if self._suspects:
                return [self._suspects.popleft()]
            return [self._queue.popleft() for _ in range(min(self.config.batch, len(self._queue)))]

    def _send_requests(self) -> None:
        for actor in self._actors:
            while actor.ready and len(actor.requests) < IN_FLIGHT:
                batch = self._next_batch()
                if not batch:
                    return
                refs = {}
                for _, task in batch:
                    if task.id not in self._task_refs:
                        self._task_refs[task.id] = self._ray.put(task)
                    refs[task.id] = self._task_refs[task.id]
                jobs = [(t.id, p.program, p.limits, p.times, p.coverage) for p, t in batch]
                if len(batch) == 1:  # a try counts for a program that ran alone: a failure is its own
                    batch[0][0].tries += 1
                budget = sum(p.budget() for p, _ in batch)
                shared = sum(r.budget for r in actor.requests.values())  # the other request shares the sandboxes
                deadline = time.monotonic() + budget + shared + 60.0
                actor.requests[actor.handle.run.remote(refs, jobs)] = _Request(batch, budget, deadline)

    def _collect(self, ref: Any) -> None:
        actor = next((a for a in self._actors if ref in a.requests or ref == a.ping), None)
        if actor is None:
            return
        if ref == actor.ping:
            actor.ping = None
            try:
                info = self._ray.get(ref)
            except Exception:  # it could not restart (its node is gone): a new pool
                self._replace(actor)
                return
            moved = info["node"] != actor.info.get("node") or info["isolated"] != actor.info.get("isolated")
            actor.info, actor.ready = info, True
            if moved:
                self._report([actor])
            return
        request = actor.requests.pop(ref)
        try:
            results = self._ray.get(ref)
        except Exception as e:
            self._failed(actor, request, f"the pool on {actor.info.get('host', actor.node)} failed: {reason(e)}")
            return
        actor.failures = 0
        if len(results) != len(request.jobs):
            results = [_failed(p.plan, "unusable answer from the Ray sandbox pool") for p, _ in request.jobs]
        for (pending, _), result in zip(request.jobs, results, strict=True):
            pending.future.set_result(result)

    def _failed(self, actor: _Actor, request: _Request, error: str) -> None:
        """A request failed with its pool: a lone program counts a try (at `max_tries` it gets runtime_error),
        the programs of a larger request go back to be sent alone; the pool restarts."""
        back = request.jobs
        if len(request.jobs) == 1:
            pending, _ = request.jobs[0]
            if pending.tries >= self.config.max_tries:
                message = f"sent alone to a Ray sandbox pool {pending.tries} times; {error}"
                pending.future.set_result(_failed(pending.plan, message))
                back = []
        self.resent += len(back)
        with self._lock:
            self._suspects.extendleft(reversed(back))
        actor.failures += 1
        if actor.ready:  # Ray restarts it; it takes requests again once it answers
            actor.ready = False
            actor.ping, actor.ping_deadline = actor.handle.info.remote(), time.monotonic() + START_TIMEOUT

    def _expire(self) -> None:
        now = time.monotonic()
        for actor in self._actors:
            if any(r.deadline < now for r in actor.requests.values()):
                self._kill(actor.handle, restart=True)  # its requests fail and come back through `_failed`
            if actor.ping is not None and actor.ping_deadline < now:
                actor.ping = None
                self._replace(actor)

    def _replace(self, actor: _Actor) -> None:
        """A new pool in `actor`'s slot (on its node if it lives, else anywhere), or the slot given up."""
        self._kill(actor.handle)
        actor.failures += 1
        if actor.failures >= MAX_FAILURES:
            actor.gone, actor.ready = True, False
            return
        actor.handle = self._new_pool(actor, actor.info.get("workers"), soft=True)
        actor.ping, actor.ping_deadline = actor.handle.info.remote(), time.monotonic() + START_TIMEOUT

    def _fail_all(self, why: str) -> None:
        with self._lock:
            self._dead = why
            waiting = [p for p, _ in self._queue] + [p for p, _ in self._suspects]
            self._queue.clear()
            self._suspects.clear()
        waiting += [p for a in self._actors for r in a.requests.values() for p, _ in r.jobs]
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(SandboxError(why))
