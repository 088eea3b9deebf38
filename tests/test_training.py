"""PPER fine-tuning on the real default model: the loss covers program tokens only, steps learn, and a
checkpointed round resumes bit for bit."""

from __future__ import annotations

import pytest
import torch

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.buffer.replay import Replay, ReplayConfig
from pper.execution.results import ProgramResult, TestResult
from pper.generation import build_prompt, load_model
from pper.tasks import load_tasks
from pper.training import TrainingConfig
from pper.training.examples import build_example, pack
from pper.training.trainer import PPERTrainer, autocast_dtype


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("humaneval", limit=4)


def _fresh():
    model, tokenizer, _ = load_model("default")
    return model, tokenizer


def test_examples_are_the_sampling_prompt_and_the_program_then_end_of_text(tasks):
    _, tokenizer = _fresh()
    task = tasks[0]
    program = task.solutions[0]
    ex = build_example(task, program, tokenizer, 1024)
    prompt = build_prompt(task, tokenizer)
    assert list(ex.ids[: ex.target_start]) == tokenizer(prompt.text).input_ids  # as at sampling time
    assert ex.ids[-1] == tokenizer.eos_token_id
    assert prompt.text + tokenizer.decode(ex.ids[ex.target_start : -1]) == program
    short = build_example(task, program, tokenizer, 64)
    assert len(short.ids) == 64 and short.target_tokens >= 1

    mbpp_like = tasks[0].__class__(id="x", prompt="Add two numbers.", tests=task.tests, prompt_style="instruction")
    chat = build_example(mbpp_like, "def add(a, b):\n    return a + b\n", tokenizer, 1024)
    target = tokenizer.decode(chat.ids[chat.target_start :])
    assert target == "```python\ndef add(a, b):\n    return a + b\n```" + tokenizer.eos_token


def test_the_packed_loss_is_the_usual_loss_over_program_tokens_only(tasks):
    model, tokenizer = _fresh()
    trainer = PPERTrainer(model, tokenizer, TrainingConfig(method="full", precision="float32"))
    examples = [build_example(t, t.solutions[0], tokenizer, 1024) for t in tasks[:3]]
    ids, positions, predict = pack(examples)
    assert len(ids) == sum(len(e.ids) for e in examples) and len(predict) == sum(e.target_tokens for e in examples)
    with torch.no_grad():
        packed = trainer.loss_sum(examples).item()
        reference = 0.0
        for e in examples:  # transformers' own loss with the prompt labels masked
            ids_ = torch.tensor([e.ids])
            labels = ids_.clone()
            labels[0, : e.target_start] = -100
            reference += model(input_ids=ids_, labels=labels).loss.item() * e.target_tokens
    assert packed == pytest.approx(reference, rel=1e-4)


def _buffer(path, tasks):
    buffer = ReplayBuffer(path)
    buffer.add_tasks(tasks)
    ids = buffer.add_programs(NewProgram(t.id, t.solutions[0], -5.0 - i, 40, "m") for i, t in enumerate(tasks))
    verdicts = [("passed",), ("passed", "wrong_answer")]
    results = [ProgramResult(tuple(map(TestResult, verdicts[i % 2]))) for i in range(len(ids))]
    buffer.add_executions(Execution(pid, r) for pid, r in zip(ids, results, strict=True))
    return buffer


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.params.items()}


def test_lora_steps_learn_and_a_checkpointed_round_resumes_exactly(tasks, tmp_path):
    config = TrainingConfig(method="lora", steps=4, batch_size=2, learning_rate=1e-3, precision="float32")
    model, tokenizer = _fresh()
    with _buffer(tmp_path / "b.sqlite", tasks) as buffer:
        trainer = PPERTrainer(model, tokenizer, config, seed=0)
        trainer.begin_round(1, Replay.from_buffer(buffer, ReplayConfig(), seed=1), config.steps)
        fixed = trainer.draw_examples(buffer)
        with torch.no_grad():
            before = trainer.loss_sum(fixed).item()
        steps = list(trainer.run_round(buffer, checkpoint=lambda: trainer.save(tmp_path / "ckpt")))
        assert [s.step for s in steps] == [1, 2, 3, 4]
        assert all(s.target_tokens < s.tokens for s in steps)  # prompt tokens are not trained
        with torch.no_grad():
            assert trainer.loss_sum(fixed).item() < before  # it learns the replayed programs
        straight = _weights(trainer)

        # a new process would start from the base model and the checkpoint of step 3 (the last one saved)
        model2, _ = _fresh()
        resumed = PPERTrainer(model2, tokenizer, config, seed=0)
        resumed.load(tmp_path / "ckpt", Replay.from_buffer(buffer, ReplayConfig(), seed=1))
        assert resumed.step == 3
        list(resumed.run_round(buffer))
        again = _weights(resumed)
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


def test_the_precision_setting(tasks):
    assert autocast_dtype("float32", "cpu") is None
    assert autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    assert autocast_dtype("auto", "cpu") in (None, torch.bfloat16)
