"""pper.rl.ExecutionReward: TRL's reward-function contract, the programs it runs, reward kinds, bad programs, and a
real GRPOTrainer driven by it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pper.errors import PperError
from pper.execution.results import ProgramResult, TestResult
from pper.rl import ExecutionReward, program_for, reward_of, rl_dataset
from pper.tasks import load_tasks


@pytest.fixture(scope="module")
def humaneval():
    return load_tasks("humaneval", limit=3)


@pytest.fixture(scope="module")
def reward(humaneval):
    with ExecutionReward(humaneval, workers=2) as r:
        yield r


def _body(task) -> str:
    return task.solutions[0][len(task.prompt) :]


def test_a_canonical_solution_scores_above_a_wrong_body_and_bad_programs_get_their_reward(reward, humaneval):
    task = humaneval[0]
    completions = [
        _body(task),  # canonical
        "    return False\n",  # wrong on some tests
        "    while True:\n        pass\n",  # timeout
        "    return [0] * 10**10\n",  # memory
        "    return (\n",  # syntax error
        "    import os; os._exit(3)\n",  # kills its process
    ]
    rewards = reward(prompts=[task.prompt] * 6, completions=completions, task_id=[task.id] * 6)
    assert len(rewards) == 6 and all(isinstance(r, float) for r in rewards)
    assert rewards[0] == 1.0 and 0.0 < rewards[1] < 1.0 and rewards[2:] == [0.0] * 4


def test_the_program_is_the_prompt_passed_plus_the_completion_or_the_code_of_an_answer(humaneval, mbpp_path):
    task = humaneval[0]
    code = task.prompt.rstrip()  # the prompt pper formats; the raw one (with its newline) too
    assert program_for(task, code, "\n    return 1\n") == code + "\n    return 1\n"  # exactly what was passed
    assert program_for(task, task.prompt, "    return 1\nprint(f())\n") == task.prompt + "    return 1"  # cut
    # a completion task asked in a chat (rl_dataset(chat=True)): the code of the answer, not prompt + answer
    from pper.generation import load_model

    _, tokenizer, _ = load_model("default")
    (asked,) = rl_dataset([task], tokenizer, chat=True)["prompt"]
    assert not asked.startswith(code)
    answer = f"Here it is:\n```python\n{task.solutions[0]}```\n"
    assert program_for(task, asked, answer) == task.solutions[0]
    chat = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "Sure:\n```python\ndef f():\n    pass\n```"},
    ]
    assert program_for(task, [{"role": "user", "content": "x"}], chat) == "def f():\n    pass\n"
    mbpp = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=1)[0]
    assert program_for(mbpp, "any prompt", "Here:\n```python\nx = 1\n```\nDone") == "x = 1\n"


def test_reward_kinds():
    def result(*verdicts):
        return ProgramResult(tuple(TestResult(v) for v in verdicts))

    ok, some = result("passed", "passed"), result("passed", "wrong_answer")
    assert [reward_of(some, k) for k in ("pass_rate", "strict", "coderl")] == [0.5, 0.0, -0.3]
    assert [reward_of(ok, k) for k in ("pass_rate", "strict", "coderl")] == [1.0, 1.0, 1.0]
    assert reward_of(result("runtime_error", "wrong_answer"), "coderl") == -0.6
    assert reward_of(result("timeout", "timeout"), "coderl") == -0.6
    assert reward_of(result("syntax_error", "syntax_error"), "coderl") == -1.0
    with pytest.raises(PperError, match="unknown reward kind 'nope'"):
        ExecutionReward("humaneval", kind="nope")


def test_conversational_completions_unknown_tasks_and_missing_columns(reward, humaneval):
    task = humaneval[1]
    answer = [{"role": "assistant", "content": f"```python\n{task.solutions[0]}\n```"}]
    assert reward(prompts=[[{"role": "user", "content": "q"}]], completions=[answer], task_id=[task.id]) == [1.0]
    with pytest.raises(PperError, match="unknown task_id 'HumanEval/999'"):
        reward(prompts=["p"], completions=["c"], task_id=["HumanEval/999"])
    with pytest.raises(PperError, match=r"unknown task_id 'zz' \(and 1 more\).*ids are strings like 'HumanEval/0'"):
        reward(prompts=["p", "p"], completions=["c", "c"], task_id=[11, "zz"])  # a HF dataset's integer ids


def test_a_dataset_column_named_program_is_not_judged(reward, humaneval):
    # TRL passes every dataset column to the reward: a reference solution in a `program` column must not replace
    # the completion (only a multi-turn rollout's `pper_program` does)
    task = humaneval[0]
    wrong, canonical = "    return None\n", task.solutions[0]
    call = {"prompts": [task.prompt], "completions": [wrong], "task_id": [task.id]}
    assert reward(**call, program=[canonical]) == [0.0]
    assert reward(**call, pper_program=[canonical]) == [1.0]
    with pytest.raises(PperError, match="needs a `task_id` column"):
        reward(prompts=["p"], completions=["c"])


def test_the_sandbox_pool_is_started_once_and_programs_can_be_logged(tmp_path, humaneval):
    from pper.buffer import ReplayBuffer

    task = humaneval[2]
    with ExecutionReward(humaneval, workers=1, run_dir=tmp_path / "log", kind="strict") as r:
        r(prompts=[task.prompt], completions=[_body(task)], task_id=[task.id])
        pool = r.executor()
        r(prompts=[task.prompt], completions=["    return None\n"], task_id=[task.id], completion_ids=[[1, 2, 3]])
        assert r.executor() is pool and r.calls == 2 and r.scored == 2
        assert r.__name__ == "pper_strict"
    with ReplayBuffer.in_run(tmp_path / "log") as buffer:
        programs = buffer.programs()
    assert [p.pass_rate for p in programs] == [1.0, 0.0] and programs[1].num_tokens == 3


def test_import_pper_rl_needs_no_trl():
    code = "import sys; sys.modules['trl'] = None; import pper.rl; print(pper.rl.ExecutionReward.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ExecutionReward", out.stderr


@pytest.mark.slow
def test_a_real_grpo_trainer_runs_two_steps_with_the_reward(tmp_path, humaneval):
    trl = pytest.importorskip("trl")
    from pper.generation import load_model

    model, tokenizer, _ = load_model("default")
    tokenizer.padding_side = "left"
    data = rl_dataset(humaneval[:2], tokenizer)
    assert data.column_names == ["prompt", "task_id"] and data[0]["prompt"] == humaneval[0].prompt.rstrip()
    with ExecutionReward(humaneval, workers=2) as reward:
        config = trl.GRPOConfig(
            output_dir=str(tmp_path / "grpo"),
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=24,
            max_steps=2,
            learning_rate=1e-5,
            beta=0.0,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
        )
        trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                                  processing_class=tokenizer)  # fmt: skip
        trainer.train()
        assert reward.calls == 2 and reward.scored == 4
    logged = [h for h in trainer.state.log_history if "rewards/pper_pass_rate/mean" in h]
    assert len(logged) == 2


def test_feedback_tokens_close_the_answer_and_open_the_next_one():
    from pper.generation import load_model
    from pper.rl.multiturn import feedback_ids

    _, tokenizer, _ = load_model("default")
    text = tokenizer.decode(feedback_ids(tokenizer, "The program failed this test:\nassert f() == 1", ended=True))
    assert text.startswith("\n<|im_start|>user\nThe program failed this test:")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(feedback_ids(tokenizer, "x", ended=False)).startswith("<|im_end|>\n<|im_start|>user")


@pytest.mark.slow
def test_multi_turn_rollouts_through_a_real_grpo_trainer(tmp_path, mbpp_path):
    """Each completion answers, gets public-test feedback (masked out of the loss) and answers again; the reward
    judges the last answer's program on the private tests."""
    trl = pytest.importorskip("trl")
    import torch

    from pper.generation import load_model
    from pper.rl.multiturn import repair_rollout

    tasks = [t for t in load_tasks(f"mbpp:{mbpp_path}", split="test", limit=3) if t.metadata["challenge_test_list"]]
    model, tokenizer, _ = load_model("default")
    tokenizer.padding_side = "left"
    seen: list[dict] = []
    judged: list[list[str]] = []

    class Capturing(trl.GRPOTrainer):
        def _compute_loss(self, model, inputs):
            seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
            return super()._compute_loss(model, inputs)

    with ExecutionReward(tasks, workers=1) as reward:

        def recording(**kwargs):
            judged.append(list(kwargs["pper_program"]))
            return reward(**kwargs)

        recording.__name__ = "pper"
        config = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=2,
                                max_completion_length=24, max_steps=1, beta=0.0, report_to=[], use_cpu=True,
                                save_strategy="no", bf16=False)  # fmt: skip
        trainer = Capturing(model=model, reward_funcs=recording, args=config, processing_class=tokenizer,
                            train_dataset=rl_dataset(tasks, tokenizer, chat=True),
                            rollout_func=repair_rollout(tasks, 2, executor=reward.executor()))  # fmt: skip
        trainer.train()
    (batch,) = seen
    assert "tool_mask" in batch  # TRL's mask of environment tokens
    repaired = 0
    for ids, env in zip(batch["completion_ids"], batch["tool_mask"], strict=True):
        fed_back = tokenizer.decode(ids[env == 0])
        if "The program failed this test:" in fed_back:
            repaired += 1
            assert "hellolloll" not in fed_back and "challenge" not in fed_back  # no private test in feedback
    assert repaired >= 1 and len(judged) == 1 and len(judged[0]) == 2
