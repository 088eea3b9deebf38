"""Data-parallel training (accelerate, DDP over gloo, 2 CPU processes) through `pper run --processes 2`: the
loss curve equals one process's with the same minibatches, and a run killed mid-round resumes from its
checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pper.training.trainer import read_info

CONFIG = {
    "runs_dir": None,  # set per test
    "tasks": {"source": "humaneval", "limit": 4, "holdout": 0.0, "validation": 0.0},  # 4 training tasks only
    "generation": {"k": 2, "max_new_tokens": 32, "batch_size": 1},
    "execution": {"workers": 1},
    "training": {"steps": 4, "batch_size": 4, "micro_batch_size": 2, "checkpoint_every": 2, "precision": "float32"},
    "rounds": 1,
    "evaluation": {"before": False},
}
# DDP sums the two processes' gradients in another order than one process's backward passes: the losses
# agree to float32 rounding carried through 4 AdamW steps (1e-6 measured), not bit for bit.
RTOL = 1e-4


def _run(config: Path, name: str, processes: int, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pper", "run", "--config", str(config), "--name", name]
    return subprocess.Popen(cmd + ["--processes", str(processes)], start_new_session=True, **popen)


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.endswith("}")]


def _losses(run: Path, key: str = "loss") -> dict[int, float]:
    return {e["step"]: e[key] for e in _events(run) if e["event"] == "step"}  # the last logged of each step


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(tmp_path, processes):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "runs_dir": str(tmp_path / "runs")}))
    one = _run(config, "one", 1, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = one.communicate(timeout=900)
    assert one.returncode == 0, err

    run = tmp_path / "runs" / "ddp"
    partial = run / "checkpoints" / "round-1.partial"
    first = _run(config, "ddp", 2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not read_info(partial):  # killed once step 2's checkpoint is written
        assert first.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    group = [first.pid, *processes.descendants(first.pid)]  # the launcher and both ranks
    assert len(group) >= 3
    for pid in group:  # all at once, as when the machine dies
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first.wait()
    assert not processes.left(lambda: [p for p in group if os.path.exists(f"/proc/{p}")])
    killed_at = _losses(run)
    assert 2 in killed_at and 4 not in killed_at

    again = _run(config, "ddp", 2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err
    assert "kept: round 1" in out  # rank 0 printed the summary, once
    events = _events(run)
    runs = [i for i, e in enumerate(events) if e["event"] == "run"]
    assert [events[i].get("processes") for i in runs] == [2, 2]
    resumed = [e["step"] for e in events[runs[1] :] if e["event"] == "step"]
    assert resumed == [3, 4]  # continued from step 2's checkpoint

    single, ddp = _losses(tmp_path / "runs" / "one"), _losses(run)
    assert sorted(single) == sorted(ddp) == [1, 2, 3, 4]
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=RTOL), (step, single, ddp)
    # AdamW's steps hardly move with the gradient's scale: the gradient norms show the scale is one process's
    norms = _losses(tmp_path / "runs" / "one", "grad_norm"), _losses(run, "grad_norm")
    for step in single:
        assert norms[1][step] == pytest.approx(norms[0][step], rel=RTOL), (step, norms)
    # the programs rank 0 sampled and tested are the single process's
    buffers = [sqlite_programs(tmp_path / "runs" / n / "buffer.sqlite") for n in ("one", "ddp")]
    assert buffers[0] == buffers[1] and len(buffers[0]) >= 4


def sqlite_programs(path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT task_id, text FROM programs ORDER BY id").fetchall()


def test_a_batch_smaller_than_the_processes_is_refused(tmp_path):
    config = tmp_path / "config.yaml"
    settings = {**CONFIG, "runs_dir": str(tmp_path / "runs"), "training": {**CONFIG["training"], "batch_size": 1}}
    config.write_text(yaml.safe_dump(settings))
    done = _run(config, "small", 2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = done.communicate(timeout=600)
    assert done.returncode != 0 and "training.batch_size 1 is smaller than the 2 processes" in err


def test_a_second_run_on_a_directory_in_use_is_refused(tmp_path):
    from pper.files import exclusive

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "runs_dir": str(tmp_path / "runs")}))
    with exclusive(tmp_path / "runs" / "busy" / ".lock", "test"):  # as an orphaned rank or a second terminal
        done = _run(config, "busy", 1, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = done.communicate(timeout=300)
    assert done.returncode == 1
    assert f"is in use by another pper process (pid {os.getpid()})" in err
    assert not (tmp_path / "runs" / "busy" / "buffer.sqlite").exists()  # nothing written
