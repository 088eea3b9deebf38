"""`pper rl`: GRPO through TRL's `GRPOTrainer`, rewarded by pper's sandbox, in a run directory like `pper run`'s.

    runs/<name>/
      config.yaml, tasks.json        the configuration and the split (`pipeline.prepare`: the same held-out rules)
      eval/round-0.json, round-1.json the held-out metrics before and after training (pper's evaluator, greedy)
      rl/checkpoint-N/               TRL's checkpoints (every `rl.save_steps` steps); a killed run resumes from the last
      checkpoints/round-1/model/     the trained policy (LoRA merged), then `model/` and `kept.json` as `pper run`
      events.jsonl                   phases, and one `rl_step` row per logged step (reward mean and std, loss, ...)
      report.md, plots/reward.png    the reward curve and the held-out scores

The training tasks become a `datasets.Dataset` (`rl_dataset`: pper's prompts, and `task_id`), the reward is an
`ExecutionReward` over the same tasks (`rl.reward`), and TRL does the rest: `rl.prompts_per_step` prompts x
`rl.group_size` completions per step, advantages normalised within each group, `rl.beta` the KL coefficient.
With `rl.replay.fraction` > 0 the trainer is `pper.rl.replay`'s, which stores every group in the run's buffer and
replays prioritized ones; with `rl.prm_weight` > 0 it adds a PRM's dense term to the advantages (`pper.rl.dense`,
on either). Validation tasks are not used: the run ships its last step (there is one round).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..buffer import ReplayBuffer
from ..config import PperConfig
from ..errors import PperError
from ..files import remove_dir, write_atomic
from ..jsonl import read_jsonl
from ..pipeline import EVENTS_FILE, Events, checkpoint_dir, eval_paths, prepare, write_kept

RL_DIR = "rl"
ELAPSED = "elapsed.json"  # in rl/: training seconds spent up to each recent checkpoint (a wall-clock budget's clock)
DONE = "rl.json"  # in checkpoints/round-1/ once the policy is saved


def grpo_args(config: PperConfig, output_dir: Path) -> Any:
    """TRL's `GRPOConfig` for the `rl` section."""
    import torch
    import trl

    from ..training.trainer import autocast_dtype

    r = config.rl
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = autocast_dtype(config.training.precision, device)  # TRL's default is bf16 even where it is emulated
    return trl.GRPOConfig(
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        output_dir=str(output_dir),
        per_device_train_batch_size=r.prompts_per_step * r.group_size,
        num_generations=r.group_size,
        max_completion_length=r.max_completion_length,
        max_steps=r.steps,
        learning_rate=r.learning_rate,
        beta=r.beta,
        temperature=r.temperature,
        seed=config.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=r.save_steps,
        save_total_limit=2,  # the last checkpoints only (a wall-clock arm may run thousands of steps)
        # a wall-clock budget has no known number of steps to decay the learning rate over: keep it constant
        lr_scheduler_type="constant" if r.max_seconds is not None else "linear",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        use_vllm=r.use_vllm,
        disable_tqdm=True,
    )


class Budget:
    """The training's wall-clock: the seconds earlier attempts spent up to the checkpoint this one resumes from
    (`resumed_at`, its step; None: a fresh start), plus this attempt's; with `max_seconds`, training stops after the
    step that reaches it. `path` maps the step of each of the last `KEEP` checkpoints to the seconds spent up to
    it, written just before the checkpoint is saved, so every complete checkpoint has its entry. A run resumed from
    a checkpoint whose seconds already reach the budget (killed between its last checkpoint and the saved policy)
    trains no further step: `train_grpo` takes the checkpoint's policy as it is."""

    KEEP = 8

    def __init__(self, path: Path, max_seconds: float | None, resumed_at: int | None = None):
        self.path, self.max_seconds = path, max_seconds
        saved = json.loads(path.read_text()) if path.exists() else {}
        self.by_step = {int(k): float(v) for k, v in saved.get("by_step", {}).items()}
        if resumed_at is None:
            self.by_step, self.before = {}, 0.0
        elif resumed_at in self.by_step:
            self.before = self.by_step[resumed_at]
        else:  # written by an older pper (its last save only), or lost
            self.before = float(saved.get("seconds", 0.0))
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def spent(self) -> bool:
        """Whether there is a budget and the seconds spent have reached it."""
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds

    def record(self, step: int) -> None:
        """Write the seconds spent up to `step` (a checkpoint about to be saved)."""
        self.by_step = {s: v for s, v in self.by_step.items() if s < step}
        self.by_step[step] = round(self.elapsed(), 2)
        kept = dict(sorted(self.by_step.items())[-self.KEEP :])
        write_atomic(self.path, json.dumps({"by_step": {str(s): v for s, v in kept.items()}}) + "\n")

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                # transformers' own flow callback ran first: control.should_save says whether a checkpoint follows
                if clock.spent():
                    control.should_training_stop = True
                    control.should_save = True
                if control.should_save:
                    clock.record(state.global_step)

        return Stop()


def last_checkpoint(output: Path) -> Path | None:
    """The newest complete TRL checkpoint in `output`: the `checkpoint-N` with the highest N whose
    `trainer_state.json` (transformers writes it last) reads. Newer incomplete ones, left by a kill while saving, are
    removed, so that no later attempt resumes from one."""
    found = []
    for path in output.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for step, path in sorted(found, reverse=True):
        try:
            if _checkpoint_step(path) == step:
                return path
        except (OSError, ValueError, KeyError, TypeError):
            pass
        remove_dir(path)
    return None


def _checkpoint_step(checkpoint: str | Path) -> int:
    """The global step a TRL (transformers) checkpoint was saved at."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def check_rl(config: PperConfig, run_dir: Path) -> Path | None:
    """Refuse an `rl` section that cannot run, before any model is loaded; the PRM's directory where
    `rl.prm_weight` > 0 (`prm.model`, default RUN/prm: a clear error where there is none)."""
    turns = config.rl.turns
    if turns > 1 and config.rl.replay.fraction > 0:
        raise PperError("rl.turns > 1 and rl.replay: group replay of multi-turn rollouts is not supported; use one")
    if config.rl.prm_weight == 0:
        return None
    if turns > 1:
        raise PperError("rl.turns > 1 and rl.prm_weight: a multi-turn rollout is not one program to score; use one")
    from ..prm.train import prm_dir

    return prm_dir(config, run_dir)


def _trainer(
    config: PperConfig, run_dir: Path, train_tasks: list, model: Any, tokenizer: Any, reward: Any,
    resume: Path | None, prm_path: Path | None, callbacks: list,
) -> Any:  # fmt: skip
    """TRL's `GRPOTrainer` for the `rl` section, or pper's subclass of it: group replay (`rl.replay.fraction` > 0,
    its buffer the run's), the PRM's dense term (`prm_path`), a repair rollout (`rl.turns` > 1)."""
    import trl

    from .data import rl_dataset

    turns = config.rl.turns
    data = rl_dataset(train_tasks, tokenizer, chat=turns > 1)
    common = {
        "model": model,
        "reward_funcs": reward,
        "args": grpo_args(config, run_dir / RL_DIR),
        "train_dataset": data,
        "processing_class": tokenizer,
        "peft_config": config.training.lora.peft_config() if config.rl.method == "lora" else None,
        "callbacks": callbacks,
    }
    if turns > 1:
        from .multiturn import repair_rollout

        common["rollout_func"] = repair_rollout(train_tasks, turns, config.feedback.max_chars, reward.executor())
    trainer_class: type = trl.GRPOTrainer
    if config.rl.replay.fraction > 0:
        from .replay import trainer_class as replay_trainer

        buffer = ReplayBuffer.in_run(run_dir)
        buffer.add_tasks(train_tasks)
        # groups stored after the checkpoint are sampled again from its step on: drop them, never store twice
        buffer.drop_groups(_checkpoint_step(resume) if resume else 0)
        task_ids = dict(zip(data["prompt"], data["task_id"], strict=True))
        trainer_class = replay_trainer()
        common.update(buffer=buffer, replay=config.rl.replay, task_ids=task_ids, model_name=config.generation.model)
    if prm_path is not None:  # rl.prm_weight > 0: the PRM's dense term, on TRL's trainer or the replaying one
        from ..prm.model import PRM
        from .dense import trainer_class as dense_trainer

        trainer_class = dense_trainer(trainer_class)
        common.update(prm=PRM.load(prm_path), prm_weight=config.rl.prm_weight,
                      tasks={t.id: t for t in train_tasks}, max_length=config.prm.max_length)  # fmt: skip
    return trainer_class(**common)


def checkpoint_policy(model: Any, checkpoint: Path) -> Any:
    """The policy a TRL checkpoint holds: `model` with the checkpoint's LoRA adapter (a PEFT model, to merge), or
    its full weights."""
    if (checkpoint / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, checkpoint)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=model.dtype)


def train_grpo(config: PperConfig, run_dir: Path, train_tasks: list, events: Events) -> Path:
    """Train (or resume) GRPO; the trained policy as a plain transformers directory (`checkpoints/round-1/model`)."""
    from transformers import TrainerCallback

    from ..generation import load_model
    from .reward import ExecutionReward

    final = checkpoint_dir(run_dir, 1)
    if (final / DONE).exists():
        return final / "model"
    prm_path = check_rl(config, run_dir)
    model, tokenizer, _ = load_model(config.generation.model, config.generation.dtype)
    tokenizer.padding_side = "left"
    output = run_dir / RL_DIR
    output.mkdir(parents=True, exist_ok=True)

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                events.log(event="rl_step", phase="rl", step=state.global_step,
                           **{k: v for k, v in logs.items() if isinstance(v, (int, float))})  # fmt: skip

    resume = last_checkpoint(output)
    clock = Budget(output / ELAPSED, config.rl.max_seconds, _checkpoint_step(resume) if resume else None)
    if resume is not None and clock.spent():  # killed after the budget's last checkpoint: no step past the budget
        policy, steps, seconds = checkpoint_policy(model, resume), _checkpoint_step(resume), clock.before
    else:
        with ExecutionReward(train_tasks, kind=config.rl.reward, execution=config.execution) as reward:
            trainer = _trainer(config, run_dir, train_tasks, model, tokenizer, reward, resume, prm_path,
                               [Log(), clock.callback()])  # fmt: skip
            try:
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            finally:
                if isinstance(getattr(trainer, "buffer", None), ReplayBuffer):
                    trainer.buffer.close()
        policy, steps, seconds = trainer.model, trainer.state.global_step, clock.elapsed()
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    staging = final.with_name(final.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    policy.save_pretrained(staging / "model")
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(staging / "model")
    record = {
        "steps": steps,
        "seconds": round(seconds, 1),
        "max_seconds": config.rl.max_seconds,
    }
    write_atomic(staging / DONE, json.dumps(record) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final / "model"


def run_rl(config: PperConfig, force: bool = False, show_progress: bool = True) -> Path:
    """Run (or resume) `pper rl` for `config`; returns the run directory."""
    from ..evaluation import evaluate
    from ..execution import open_executor
    from ..generation import load_model, transformers_sampler

    prepared = prepare(config, force=force)
    run_dir = prepared.dir
    if not (checkpoint_dir(run_dir, 1) / DONE).exists():
        check_rl(config, run_dir)  # before the evaluation: a missing PRM fails now
    events = Events(run_dir / EVENTS_FILE)
    events.log(event="run", command="rl")
    e = config.evaluation

    def held_out(round: int, model: str) -> None:
        samples, metrics = eval_paths(run_dir, round)
        if not prepared.eval or metrics.exists():
            return
        loaded = load_model(model, config.generation.dtype)
        name = loaded[2] if round == 0 else f"{loaded[2]}@{config.name}/rl"
        sampler = transformers_sampler(config.generation, config.seed, (loaded[0], loaded[1], name))
        with open_executor(config.execution) as executor, events.phase("evaluation", round):
            info = {"round": round, "model": name}
            if e.turns > 1:
                from ..evaluation.multiturn import evaluate_turns

                evaluate_turns(prepared.eval, samples, executor, sampler, e.turns, config.feedback.max_chars,
                               e.independent, metrics, info, show_progress)  # fmt: skip
            else:
                evaluate(prepared.eval, samples, executor, sampler, e.mode, e.n, e.ks, metrics, info, show_progress)

    if e.before:
        held_out(0, config.generation.model)
    with events.phase("rl", 1):
        policy = train_grpo(config, run_dir, prepared.train, events)
    held_out(1, str(policy))
    write_kept(run_dir, config, {"round": 1, "validation": None, "rule": "rl: the trained policy",
                                 "from": str(Path("checkpoints", "round-1", "model"))})  # fmt: skip
    write_rl_report(run_dir, config)
    events.log(event="finished")
    return run_dir


def rl_steps(run_dir: Path) -> list[dict[str, Any]]:
    """The logged GRPO steps of a run, the last row of each step (a resumed run logs again the steps after its last
    checkpoint)."""
    steps: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(run_dir / EVENTS_FILE):
        if row.get("event") == "rl_step":
            steps[row["step"]] = row
    return [steps[s] for s in sorted(steps)]


def write_rl_report(run_dir: Path, config: PperConfig) -> Path:
    """report.md and plots/reward.png of a `pper rl` run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import round_metrics

    steps = rl_steps(run_dir)
    r = config.rl
    done = checkpoint_dir(run_dir, 1) / DONE
    record = json.loads(done.read_text()) if done.exists() else {}
    ran = f"{record['steps']} steps" if "steps" in record else f"up to {r.steps} steps"
    if r.max_seconds is not None:
        spent = f", {record['seconds']:.0f} s" if "seconds" in record else ""
        ran += f" (a wall-clock budget of {r.max_seconds:.0f} s{spent}; at most {r.steps})"
    lines = [
        f"# pper rl `{config.name}`",
        "",
        f"GRPO (TRL) on `{config.tasks.source}` with `{config.generation.model}`, {r.method}: {ran} of "
        f"{r.prompts_per_step} prompts x {r.group_size} completions (<= {r.max_completion_length} tokens, "
        f"temperature {r.temperature}), reward `{r.reward}` from pper's sandbox, beta {r.beta}, learning rate "
        f"{r.learning_rate}.",
        "",
        "## Held-out metrics",
        "",
        "| round | tasks | pass rate | strict accuracy |",
        "|---|---|---|---|",
    ]
    for m in round_metrics(run_dir):
        o = m["overall"]
        label = "0 (before)" if m["round"] == 0 else "1 (after GRPO)"
        lines.append(f"| {label} | {o['tasks']} | {o['pass_rate']:.4f} | {o['strict_accuracy']:.4f} |")
    if steps:
        zero = sum(s.get("frac_reward_zero_std", 0.0) for s in steps) / len(steps)
        lines += ["", "## Reward", "", f"{len(steps)} steps logged; mean reward {steps[0]['reward']:.4f} at step "
                  f"{steps[0]['step']}, {steps[-1]['reward']:.4f} at step {steps[-1]['step']}; on average "
                  f"{zero:.0%} of the groups had rewards that all tied (zero advantage).", "",
                  "![reward](plots/reward.png)"]  # fmt: skip
        fig, ax = plt.subplots(figsize=(5, 3.5))
        x = [s["step"] for s in steps]
        mean = [s["reward"] for s in steps]
        std = [s.get("reward_std", 0.0) for s in steps]
        ax.plot(x, mean, "o-", label="mean reward")
        ax.fill_between(x, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2, label="± std")  # fmt: skip
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(f"reward ({r.reward})")
        ax.grid(alpha=0.3)
        ax.legend()
        (run_dir / "plots").mkdir(exist_ok=True)
        fig.tight_layout()
        fig.savefig(run_dir / "plots" / "reward.png", dpi=120)
        plt.close(fig)
    report = run_dir / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    return report
