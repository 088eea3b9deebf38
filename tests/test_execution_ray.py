"""The Ray back-end of the testing phase on a real Ray instance on this machine (two sandbox pools)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.execution import ExecutionConfig, Executor, Limits, RayConfig, namespaces_available, open_executor
from pper.pipeline import execute_untested
from pper.tasks import load_tasks

ray = pytest.importorskip("ray")

LIMITS = Limits(wall_time=2.0, cpu_time=2.0)


def _programs(tasks):
    """Passing and failing programs: each reference, a wrong answer, a crash and a syntax error."""
    out = []
    for i, t in enumerate(tasks):
        out.append((t, t.solutions[0]))
        out.append((t, [t.prompt + "    return None\n", t.prompt + "    raise ValueError('no')\n", "def (:\n"][i % 3]))
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_gives_the_local_verdicts_on_humaneval_programs(cluster):
    jobs = _programs(load_tasks("humaneval", limit=24))  # 48 programs
    config = ExecutionConfig(limits=LIMITS, backend="ray", ray=RayConfig(actors_per_node=2, workers=1, batch=4))
    with open_executor(config) as remote:
        assert len(remote.nodes) == 2 and all(n["isolated"] == namespaces_available() for n in remote.nodes)
        got = list(remote.map(jobs))
        unordered = dict(remote.map_unordered(jobs))
    with Executor(limits=LIMITS, workers=2) as local:
        want = list(local.map(jobs))
    assert [r.verdicts for r in got] == [r.verdicts for r in want]
    assert [unordered[i].verdicts for i in range(len(jobs))] == [r.verdicts for r in want]
    assert [r.error for r in got] == [r.error for r in want]
    assert [r.all_passed for r in got] == [True, False] * 24


def test_a_killed_pool_loses_no_program_and_records_none_twice(cluster, tmp_path):
    tasks = load_tasks("humaneval", limit=12)
    slow = "import time\ntime.sleep(0.4)\n"  # each program takes a while to load, so the kill lands mid-request
    programs = [NewProgram(t.id, slow + t.solutions[0], -1.0, 10, "m") for t in tasks]
    programs += [NewProgram(t.id, slow + t.prompt + "    return None\n", -2.0, 5, "m") for t in tasks]
    config = ExecutionConfig(limits=LIMITS, backend="ray", ray=RayConfig(actors_per_node=2, workers=1, batch=3))
    killed = {}
    with ReplayBuffer(tmp_path / "buffer.sqlite") as buffer, open_executor(config) as executor:
        buffer.add_tasks(tasks)
        ids = buffer.add_programs(programs)
        victim = executor._actors[0]

        def kill_mid_request():
            deadline = time.monotonic() + 120
            while not victim.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)  # the pool is running its first request
            killed["held"] = sum(len(r.jobs) for r in victim.requests.values())
            os.kill(victim.info["pid"], signal.SIGKILL)

        killer = threading.Thread(target=kill_mid_request)
        killer.start()
        # what the pipeline's testing step does (`execute_untested`): results as they finish, committed in batches
        untested = buffer.untested()
        by_id = {t.id: t for t in tasks}
        arrived, stored = [], 0
        for i, result in executor.map_unordered((by_id[p.task_id], p.text) for p in untested):
            arrived.append(i)
            stored += buffer.add_executions([Execution(untested[i].id, result)])
        killer.join()
        assert sorted(arrived) == list(range(len(programs))) and stored == len(programs)  # each once
        assert killed["held"] > 0 and executor.resent >= killed["held"]
        assert execute_untested(buffer, executor, show_progress=False) == 0
        got = {p.id: p.verdicts for p in buffer.programs()}
    with Executor(limits=LIMITS, workers=2) as local:
        want = [r.verdicts for r in local.map((tasks[i % 12], p.text) for i, p in enumerate(programs))]
    assert [got[i] for i in ids] == want  # the killed pool's programs got their own verdicts


def test_a_program_whose_pool_dies_each_time_gets_runtime_error(cluster):
    task = load_tasks("humaneval", limit=1)[0]
    ray_config = RayConfig(actors_per_node=2, workers=1, max_tries=2)
    config = ExecutionConfig(limits=Limits(wall_time=20.0, cpu_time=20.0), backend="ray", ray=ray_config)
    with open_executor(config) as executor:
        future = executor.submit(task, "import time\ntime.sleep(15)\n")
        for tries in (1, 2):  # kill whichever pool holds the program, twice
            while not any(a.requests for a in executor._actors):
                time.sleep(0.01)
            time.sleep(0.3)
            os.kill(next(a for a in executor._actors if a.requests).info["pid"], signal.SIGKILL)
            while executor.resent < tries and not future.done():
                time.sleep(0.01)
        result = future.result(timeout=120)
        assert set(result.verdicts) == {"runtime_error"} and "2 times" in result.error
        assert executor.resent == 1
        assert executor.run(task, task.solutions[0]).all_passed  # the pools came back


def test_pper_test_backend_ray_matches_local(tmp_path):
    tasks = load_tasks("humaneval", limit=3)
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": t.id, "completion": t.solutions[0][len(t.prompt) :]} for t in tasks]
    rows.append({"task_id": tasks[0].id, "completion": "    return 0\n"})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    verdicts = {}
    for backend in ("local", "ray"):
        out = tmp_path / f"{backend}.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "pper", "test", str(samples), "--tasks", "humaneval", "--backend", backend,
             "--workers", "1", "--out", str(out), "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["passed"] == 3
        verdicts[backend] = [json.loads(line)["verdicts"] for line in out.read_text().splitlines()]
    assert verdicts["ray"] == verdicts["local"]
    assert "pper ray: node" in done.stderr and "isolation:" in done.stderr


def test_explicit_namespaces_are_refused_on_a_node_without_them(tmp_path):
    # a Ray instance whose workers find no `unshare` on their PATH: a node that cannot make namespaces
    code = (
        "import os, ray\n"
        "os.environ['PATH'] = '/nonexistent'\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "from pper.execution import ExecutionConfig, open_executor\n"
        "from pper.errors import PperError\n"
        "try:\n"
        "    open_executor(ExecutionConfig(isolation='namespaces', backend='ray'))\n"
        "except PperError as e:\n"
        "    print('REFUSED', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "REFUSED the sandbox pool on Ray node" in done.stdout, done.stdout + done.stderr
    assert "cannot create namespaces" in done.stdout


def test_a_dead_address_is_a_clear_error():
    code = (
        "from pper.execution import ExecutionConfig, RayConfig, open_executor\n"
        "open_executor(ExecutionConfig(backend='ray', ray=RayConfig(address='127.0.0.1:1')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "cannot reach the Ray cluster at '127.0.0.1:1'" in done.stderr, done.stderr
