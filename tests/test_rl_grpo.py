"""`pper rl`: a GRPO run through TRL on pper's execution reward, killed after its first checkpoint and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pper.rl.grpo import rl_steps

CONFIG = {
    "runs_dir": None,
    "tasks": {"source": "humaneval", "limit": 4, "holdout": 0.5, "validation": 0},  # 2 train, 2 held out
    "generation": {"max_new_tokens": 32},
    "execution": {"workers": 1},
    "rl": {"steps": 3, "group_size": 2, "prompts_per_step": 1, "max_completion_length": 16, "save_steps": 1},
}


@pytest.mark.slow
def test_pper_rl_trains_resumes_after_kill_9_and_reports(tmp_path):
    pytest.importorskip("trl")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "runs_dir": str(tmp_path / "runs")}))
    run = tmp_path / "runs" / "grpo"
    cmd = [sys.executable, "-m", "pper", "rl", "--config", str(config), "--name", "grpo"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:  # kill it once TRL has written its first checkpoint
        if list((run / "rl").glob("checkpoint-1/trainer_state.json")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"no checkpoint before the run ended: {proc.stderr.read()}"
    assert not (run / "checkpoints" / "round-1" / "rl.json").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads((run / "checkpoints" / "round-1" / "rl.json").read_text())
    assert done["steps"] == 3 and done["seconds"] > 0 and done["max_seconds"] is None
    steps = rl_steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all("reward" in s for s in steps)
    for r in (0, 1):
        metrics = json.loads((run / "eval" / f"round-{r}.json").read_text())
        assert metrics["overall"]["tasks"] == 2
    assert json.loads((run / "kept.json").read_text())["round"] == 1 and (run / "model" / "config.json").exists()
    report = (run / "report.md").read_text()
    assert "GRPO (TRL)" in report and "1 (after GRPO)" in report and (run / "plots" / "reward.png").exists()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "run" for e in events) == 2  # the killed run and the resumed one


def test_pper_rl_is_in_the_command_line_and_config():
    out = subprocess.run([sys.executable, "-m", "pper", "config"], capture_output=True, text=True)
    assert out.returncode == 0 and "\nrl:\n" in out.stdout and "group_size: 4" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pper", "rl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "GRPO" in out.stdout
