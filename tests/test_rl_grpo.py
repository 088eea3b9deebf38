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
    half_saved = run / "rl" / "checkpoint-99"  # a kill while saving leaves a checkpoint without trainer_state.json
    half_saved.mkdir()
    (half_saved / "adapter_model.safetensors").write_bytes(b"")
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads((run / "checkpoints" / "round-1" / "rl.json").read_text())
    assert done["steps"] == 3 and done["seconds"] > 0 and done["max_seconds"] is None
    assert not half_saved.exists()  # resumed from the newest complete checkpoint; the half-saved one removed
    steps = rl_steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all("reward" in s for s in steps)
    for r in (0, 1):
        metrics = json.loads((run / "eval" / f"round-{r}.json").read_text())
        assert metrics["overall"]["tasks"] == 2
    assert json.loads((run / "kept.json").read_text())["round"] == 1 and (run / "model" / "config.json").exists()
    report = (run / "report.md").read_text()
    assert (
        "GRPO (TRL)" in report
        and ": 3 steps of 1 prompts" in report
        and "1 (after GRPO)" in report
        and (run / "plots" / "reward.png").exists()
    )
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "run" for e in events) == 2  # the killed run and the resumed one


def test_pper_rl_is_in_the_command_line_and_config():
    out = subprocess.run([sys.executable, "-m", "pper", "config"], capture_output=True, text=True)
    assert out.returncode == 0 and "\nrl:\n" in out.stdout and "group_size: 4" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pper", "rl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "GRPO" in out.stdout


def _checkpoint(root, step: int, state: str | None) -> None:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)


def test_resume_picks_the_newest_complete_checkpoint_and_removes_half_saved_ones(tmp_path):
    from pper.rl.grpo import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    _checkpoint(tmp_path, 4, json.dumps({"global_step": 4}))
    _checkpoint(tmp_path, 6, None)  # killed before trainer_state.json, which transformers writes last
    _checkpoint(tmp_path, 10, '{"global_st')  # killed while writing it
    (tmp_path / "checkpoint-notes").mkdir()  # not a checkpoint: left alone
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-notes"]


def test_the_wall_clock_resumes_from_the_seconds_of_the_checkpoint_it_resumes_from(tmp_path):
    from pper.rl.grpo import Budget

    path = tmp_path / "elapsed.json"
    clock = Budget(path, max_seconds=100.0)
    clock.before = 10.0  # as if 10 s had passed
    clock.record(5)
    clock.before = 20.0
    clock.record(10)  # then killed before checkpoint-10 was complete: the resume is from checkpoint-5
    assert Budget(path, 100.0, resumed_at=5).before == pytest.approx(10.0, abs=0.5)
    assert Budget(path, 100.0, resumed_at=10).before == pytest.approx(20.0, abs=0.5)
    resumed = Budget(path, 100.0, resumed_at=5)
    resumed.record(10)  # step 10 again, in the resumed attempt: its own seconds replace the lost attempt's
    assert json.loads(path.read_text())["by_step"]["10"] == pytest.approx(10.0, abs=0.5)
    assert Budget(path, 100.0).before == 0.0  # no checkpoint to resume from: a fresh clock
    path.write_text(json.dumps({"seconds": 42.0, "step": 3}))  # an older pper's file: its last save
    assert Budget(path, 100.0, resumed_at=3).before == 42.0


def test_a_run_resumed_with_its_budget_spent_takes_the_checkpoint_and_trains_no_further_step(tmp_path):
    """Killed after the checkpoint of the step that reached `rl.max_seconds`, before the policy was saved: the resumed
    run ships that checkpoint's policy (its LoRA adapter merged) and runs no step past the budget."""
    pytest.importorskip("trl")
    import torch
    from peft import get_peft_model

    from pper.config import validate_config
    from pper.generation import load_model
    from pper.pipeline import Events
    from pper.rl.grpo import ELAPSED, train_grpo
    from pper.tasks import load_tasks

    config = validate_config({**CONFIG, "runs_dir": str(tmp_path), "rl": {**CONFIG["rl"], "max_seconds": 10}})
    run = tmp_path / "run"
    checkpoint = run / "rl" / "checkpoint-2"
    base, _, _ = load_model("default")
    weight = "model.layers.0.self_attn.q_proj.weight"
    before = base.state_dict()[weight].clone()
    adapted = get_peft_model(base, config.training.lora.peft_config())
    for name, p in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # a trained adapter (a fresh one is zero: it would change nothing)
    adapted.save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (run / "rl" / ELAPSED).write_text(json.dumps({"by_step": {"1": 6.0, "2": 12.5}}))
    events = Events(run / "events.jsonl")
    policy = train_grpo(config, run, load_tasks("humaneval", limit=2), events)
    done = json.loads((run / "checkpoints" / "round-1" / "rl.json").read_text())
    assert done["steps"] == 2 and done["seconds"] == pytest.approx(12.5, abs=1.0)
    assert not (run / "rl" / "checkpoint-3").exists() and not (run / "events.jsonl").exists()  # no step was run
    shipped, _, _ = load_model(str(policy))
    merged = shipped.state_dict()[weight]
    assert not torch.allclose(merged, before)  # the adapter is in the shipped weights
    reference, _, _ = load_model("default")
    from peft import PeftModel

    expected = PeftModel.from_pretrained(reference, checkpoint).merge_and_unload().state_dict()[weight]
    assert torch.allclose(merged, expected)
