"""Sampling fan-out on a real Ray instance on this machine: two replicas of the default model."""

import json
import os
import signal
import threading
import time

import pytest

from pper.buffer import ReplayBuffer
from pper.generation import load_model, transformers_sampler
from pper.generation.config import GenerationConfig
from pper.pipeline import sample_into_buffer
from pper.tasks import load_tasks

ray = pytest.importorskip("ray")
CONFIG = GenerationConfig(backend="ray", replicas=2, batch_size=2, max_new_tokens=16, replica_cpus=1)


@pytest.fixture(scope="module")
def loaded():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield load_model("default")
    ray.shutdown()


@pytest.mark.slow
def test_a_killed_replica_loses_no_task_and_samples_none_twice(loaded, tmp_path):
    from pper.generation.ray_sampler import RaySampler

    model, tokenizer, name = loaded
    tasks = load_tasks("humaneval", limit=6)  # 3 chunks of 2 for 2 replicas
    sampler = RaySampler(model, tokenizer, name, CONFIG, seed=0)
    victim = sampler.info[0]["pid"]
    yielded = []

    def kill_soon():
        time.sleep(1.5)  # both replicas are decoding their first chunk
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with ReplayBuffer(tmp_path / "buffer.sqlite") as buffer:
        original = sampler.sample

        def counting(todo, mode, k, **kw):
            for task, found in original(todo, mode, k, **kw):
                yielded.append(task.id)
                yield task, found

        sampler.sample = counting
        assert sample_into_buffer(buffer, sampler, tasks, "beam", 2, show_progress=False) == 6
        killer.join()
        assert sorted(yielded) == sorted(t.id for t in tasks)  # every task once
        assert sampler.resent >= 2  # the killed replica's chunk went to the other one
        assert buffer.sampled_tasks(name, 0) == {t.id for t in tasks}
        by_task = {t.id: [p.text for p in buffer.programs(t.id)] for t in tasks}
    sampler.close()
    local = transformers_sampler(CONFIG.model_copy(update={"backend": "local"}), 0, loaded)
    want = {}
    for chunk in (tasks[0:2], tasks[2:4], tasks[4:6]):  # the replicas' batches
        want.update({t.id: [c.program for c in found] for t, found in local.sample(chunk, "beam", 2)})
    assert by_task == want  # a replica computes what a local sampler does on the same batch


def test_a_teacher_cannot_fan_out_on_ray():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a teacher's API has its own `concurrency`"):
        GenerationConfig(mode="sample", backend="ray", teacher={"base_url": "http://x", "model": "m"})


@pytest.mark.slow
def test_pper_run_samples_and_tests_on_ray(loaded, tmp_path):
    import sqlite3

    from pper.config import validate_config
    from pper.pipeline import run

    config = validate_config(
        {
            "runs_dir": str(tmp_path / "runs"),
            "tasks": {"source": "humaneval", "limit": 4, "holdout": 0.0, "validation": 0.0},
            "generation": {"mode": "greedy", "max_new_tokens": 16, "batch_size": 1, "backend": "ray", "replicas": 2},
            "execution": {"backend": "ray", "ray": {"workers": 1}},
            "training": {"steps": 1, "batch_size": 2},
            "evaluation": {"before": False},
        }
    )
    prepared = run(config, show_progress=False)
    with sqlite3.connect(prepared.dir / "buffer.sqlite") as db:
        sampled = db.execute("SELECT COUNT(*) FROM samplings").fetchone()[0]
        programs = db.execute("SELECT COUNT(*) FROM programs").fetchone()[0]
        tested = db.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
    assert sampled == 4 and programs == tested >= 1
    assert (prepared.dir / "checkpoints" / "round-1").is_dir()
    events = [json.loads(line) for line in (prepared.dir / "events.jsonl").read_text().splitlines()]
    (pools,) = [e["pools"] for e in events if e["event"] == "execution"]
    assert len(pools) == 1 and pools[0]["workers"] == 1 and "isolated" in pools[0]
