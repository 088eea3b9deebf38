"""The `pper` command line, run as users run it: a real process."""

import json
import shutil
import subprocess
import sys

import pytest

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.execution.results import ProgramResult, TestResult


def pper(*args, cwd=None, ok=True):
    done = subprocess.run(
        [sys.executable, "-m", "pper", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_console_script_and_help_on_every_command():
    exe = shutil.which("pper") or pytest.skip("the pper console script is not on PATH")
    assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.startswith("pper, version")
    top = pper("--help").stdout
    for command in ("run", "config", "tasks", "buffer"):
        assert command in top
    for command in (
        ["run"],
        ["config"],
        ["tasks"],
        ["buffer"],
        ["buffer", "stats"],
        ["buffer", "sample"],
        ["buffer", "export"],
    ):
        assert "Usage: pper" in pper(*command, "--help").stdout


def test_tasks_json(mbpp_path):
    rows = [json.loads(line) for line in pper("tasks", "humaneval", "--json").stdout.splitlines()]
    assert len(rows) == 164
    assert rows[0] == {
        "id": "HumanEval/0",
        "test_kind": "assert",
        "num_tests": 7,
        "difficulty": None,
        "split": "test",
        "source": "humaneval",
    }
    assert len(pper("tasks", f"mbpp:{mbpp_path}", "--split", "test", "--json").stdout.splitlines()) == 500
    table = pper("tasks", f"mbpp:{mbpp_path}", "--split", "train", "--limit", "3").stdout
    assert "mbpp/601" in table and "mbpp/604" not in table


def test_errors_are_one_clear_line(mbpp_path, tmp_path):
    done = pper("tasks", f"mbpp:{mbpp_path}", "--split", "tset", ok=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no tasks in split 'tset'; its splits are: prompt, test, train, validation" in done.stderr
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "a", "prompt": "p"}\n')
    assert "t.jsonl, line 1: field 'tests': missing" in pper("tasks", f"jsonl:{bad}", ok=False).stderr
    assert "has no replay buffer" in pper("buffer", "stats", tmp_path, ok=False).stderr


def test_the_default_run_splits_humaneval_82_held_out_20_validation_62_training(tmp_path):
    from pper.config import load_config
    from pper.pipeline import prepare

    prepared = prepare(load_config(overrides={"runs_dir": str(tmp_path)}))
    split = json.loads((prepared.dir / "tasks.json").read_text())
    assert (len(split["train"]), len(split["validation"]), len(split["eval"])) == (62, 20, 82)
    assert not set(split["train"]) & set(split["eval"]) and not set(split["validation"]) & set(split["eval"])
    assert {p.name for p in prepared.dir.iterdir()} >= {"config.yaml", "buffer.sqlite", "tasks.json"}


def _small_config(tmp_path, extra=""):
    config = tmp_path / "small.yaml"
    config.write_text(
        f"name: r1\nruns_dir: {tmp_path}\ntasks:\n  limit: 6\n  validation: 0\n"
        "generation:\n  mode: greedy\n  k: 1\n  max_new_tokens: 24\n"
        "training:\n  steps: 2\n  batch_size: 2\n" + extra
    )
    return config


def test_run_samples_tests_resumes_and_refuses_another_config(tmp_path):
    config = _small_config(tmp_path)
    done = pper("run", "--config", config)
    assert "buffer: 3 programs, 3 tested" in done.stdout
    assert f"report: {tmp_path / 'r1' / 'report.md'}" in done.stdout
    assert "kept: round 1, no validation tasks: the last round" in done.stdout  # tasks.validation: 0
    run_dir = tmp_path / "r1"
    for path in (
        "eval/round-0.json",
        "eval/round-1.json",
        "checkpoints/round-1/model/model.safetensors",
        "plots/pass_rate.png",
        "plots/buffer.png",
        "plots/loss.png",
        "samples/round-1.jsonl",
    ):
        assert (run_dir / path).is_file(), path
    report = (run_dir / "report.md").read_text()
    assert "| 0 | 3 |" in report and "| 1 | 3 |" in report  # a metrics row per round
    events = (run_dir / "events.jsonl").read_text()
    again = pper("run", "--config", config)  # same config: resumes, nothing sampled, tested or trained twice
    assert "buffer: 3 programs, 3 tested" in again.stdout
    new_events = (run_dir / "events.jsonl").read_text()[len(events) :]
    assert '"event": "start"' not in new_events  # every phase was already done
    other = _small_config(tmp_path, "replay:\n  alpha: 0.9\n")
    refused = pper("run", "--config", other, ok=False)
    assert refused.returncode == 1 and "made by another configuration (differs in: replay.alpha)" in refused.stderr
    pper("run", "--config", other, "--force")
    assert "alpha: 0.9" in (tmp_path / "r1" / "config.yaml").read_text()


def test_buffer_stats_sample_and_export(tmp_path):
    from pper.config import load_config
    from pper.pipeline import prepare

    run_dir = prepare(load_config(overrides={"runs_dir": str(tmp_path), "name": "r"})).dir
    with ReplayBuffer.in_run(run_dir) as b:
        task_ids = [t.id for t in b.tasks()][:5]
        ids = b.add_programs(
            NewProgram(t, f"def f():\n    return {i}\n", -1.0 - i, 5 + i, "m") for i, t in enumerate(task_ids)
        )
        verdicts = [("passed",) * (i % 3) + ("wrong_answer",) * (2 - i % 3) for i in range(4)]
        results = [ProgramResult(tuple(map(TestResult, v))) for v in verdicts]
        b.add_executions(Execution(pid, r) for pid, r in zip(ids[:4], results, strict=True))
    stats = json.loads(pper("buffer", "stats", run_dir, "--json").stdout)
    assert (stats["tasks"], stats["programs"], stats["tested"]) == (62, 5, 4)  # the training tasks
    assert all(isinstance(stats[k], int) for k in ("tasks", "programs", "tested"))
    assert sum(stats["pass_rate_distribution"].values()) == 4
    assert "pass rate 1" in pper("buffer", "stats", run_dir).stdout

    args = (
        "buffer",
        "sample",
        run_dir,
        "-n",
        "20",
        "--priority",
        "proportional",
        "--alpha",
        "0.3",
        "--seed",
        "5",
        "--json",
    )
    draws = [json.loads(line) for line in pper(*args).stdout.splitlines()]
    assert len(draws) == 20 and pper(*args).stdout == pper(*args).stdout
    assert {d["program_id"] for d in draws} <= set(ids[:4])  # the untested program is never drawn
    assert all(d["p2value"] == pytest.approx(0.3 * d["possibility"] + 0.7 * d["pass_rate"]) for d in draws)
    rank = pper("buffer", "sample", run_dir, "-n", "3", "--priority", "rank", "--alpha", "0").stdout
    assert "P2Value" in rank

    pper("buffer", "export", run_dir, "--jsonl", tmp_path / "b.jsonl", "--hf", tmp_path / "ds")
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "ds" / "dataset_info.json").exists()


def test_config_command_prints_and_validates(tmp_path):
    assert "priority: rank" in pper("config").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("replay:\n  alpah: 1\n")
    assert "did you mean 'alpha'" in pper("config", bad, ok=False).stderr
