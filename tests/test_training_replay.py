"""What training takes from the replay: PER importance-sampling weights on the loss, and P(t) rescored under the
current model over exactly the program's own tokens of its training example (the real default model)."""

from __future__ import annotations

import pytest
import torch

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.buffer.replay import Replay, ReplayConfig
from pper.config import PperConfig
from pper.execution.results import ProgramResult, TestResult
from pper.generation import load_model
from pper.tasks import AssertTests, Task, load_tasks
from pper.training import TrainingConfig, replay_for_round
from pper.training.examples import build_example
from pper.training.scoring import program_positions
from pper.training.trainer import PPERTrainer

ADD = Task(
    id="add",
    prompt="Write a function to add two numbers.",
    tests=AssertTests(("assert add(1, 2) == 3", "assert add(0, 0) == 0")),
    prompt_style="instruction",
    source="mbpp",
)
ADD_PROGRAMS = ("def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n")


@pytest.fixture(scope="module")
def humaneval():
    return load_tasks("humaneval", limit=3)


def _buffer(path, programs: list[tuple[Task, str]]) -> ReplayBuffer:
    buffer = ReplayBuffer(path)
    buffer.add_tasks(list({t.id: t for t, _ in programs}.values()))
    ids = buffer.add_programs(NewProgram(t.id, text, -1.0 - i, 1 + i, "m") for i, (t, text) in enumerate(programs))
    verdicts = [("passed", "passed"), ("passed", "wrong_answer"), ("wrong_answer", "wrong_answer")]
    results = [ProgramResult(tuple(map(TestResult, verdicts[i % 3]))) for i in range(len(ids))]
    buffer.add_executions(Execution(pid, r) for pid, r in zip(ids, results, strict=True))
    return buffer


# -- importance-sampling weights ------------------------------------------------------------------------------


def test_with_beta_0_every_draw_weighs_1_and_the_step_is_the_unweighted_one_bit_for_bit(humaneval, tmp_path):
    config = TrainingConfig(method="lora", batch_size=3, precision="float32", learning_rate=1e-3, max_length=128)
    programs = [(t, t.solutions[0]) for t in humaneval]
    with _buffer(tmp_path / "b.sqlite", programs) as buffer:
        trainers = []
        for _ in range(2):
            model, tokenizer, _ = load_model("default")
            trainer = PPERTrainer(model, tokenizer, config, seed=0)
            trainer.begin_round(1, Replay.from_buffer(buffer, ReplayConfig(importance_beta=0.0), seed=3), 1)
            trainers.append(trainer)
        examples, weights = trainers[0].draw_weighted(buffer)
        assert weights == [1.0, 1.0, 1.0]
        weighted = trainers[0].train_step(examples, weights)
        plain = trainers[1].train_step(trainers[1].draw_examples(buffer))  # the same draws: same seed
    assert weighted.loss == plain.loss and weighted.grad_norm == plain.grad_norm
    assert all(torch.equal(p, trainers[1].params[n]) for n, p in trainers[0].params.items())


def test_a_weight_scales_its_examples_summed_loss(humaneval, tmp_path):
    model, tokenizer, _ = load_model("default")
    trainer = PPERTrainer(model, tokenizer, TrainingConfig(method="lora", precision="float32"))
    a, b = (build_example(t, t.solutions[0], tokenizer, 128) for t in humaneval[:2])
    with torch.no_grad():
        la, lb = trainer.loss_sum([a]).item(), trainer.loss_sum([b]).item()
        assert trainer.loss_sum([a, b], [0.25, 1.0]).item() == pytest.approx(0.25 * la + lb, rel=1e-4)
        assert trainer.loss_sum([a, b], [1.0, 0.0]).item() == pytest.approx(la, rel=1e-4)

    # a replay with beta > 0 hands the draws' weights to the step, whose loss is sum_i w_i L_i / target tokens
    with _buffer(tmp_path / "b.sqlite", [(t, t.solutions[0]) for t in humaneval]) as buffer:
        replay = Replay.from_buffer(buffer, ReplayConfig(importance_beta=1.0), seed=0)
        trainer.begin_round(1, replay, 1)
        _, weights = trainer.draw_weighted(buffer)
    step = trainer.train_step([a, b], [0.25, 1.0])
    assert step.loss == pytest.approx((0.25 * la + lb) / (a.target_tokens + b.target_tokens), rel=1e-4)
    assert set(weights) <= set(replay.weight.tolist()) and min(weights) < 1.0


# -- rescoring P(t) -------------------------------------------------------------------------------------------


def _direct_logprob(model, example, lo: int, hi: int) -> float:
    """log P of ids[lo:hi] from one unpacked forward pass over the whole example."""
    ids = torch.tensor([example.ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logp[j - 1, example.ids[j]] for j in range(lo, hi)))


def test_rescore_scores_exactly_the_program_tokens_of_the_training_example_under_the_current_model(humaneval, tmp_path):
    model, tokenizer, _ = load_model("default")
    model.eval()
    he = humaneval[0]
    programs = [(ADD, ADD_PROGRAMS[0]), (ADD, ADD_PROGRAMS[1]), (he, he.solutions[0]), (humaneval[1], he.prompt)]
    config = PperConfig(replay={"rescore": True}, training={"precision": "float32"})
    with _buffer(tmp_path / "b.sqlite", programs) as buffer:
        stored = buffer.replay_table()
        replay = replay_for_round(buffer, config, model, tokenizer, seed=0)
        plain = replay_for_round(buffer, config.model_copy(update={"replay": ReplayConfig()}), model, tokenizer, 0)
        texts = {p.id: (p.task_id, p.text) for p in buffer.programs()}
    assert list(replay.table.program_id) == list(stored.program_id)
    assert list(plain.table.logprob) == list(stored.logprob)  # without rescore: the stored figures
    tasks = {t.id: t for t, _ in programs}
    for pid, logprob, count in zip(replay.table.program_id, replay.table.logprob, replay.table.num_tokens, strict=True):
        task_id, text = texts[int(pid)]
        task = tasks[task_id]
        example = build_example(task, text, tokenizer, 1024)
        lo, hi = program_positions(task, example, tokenizer)
        program = tokenizer.decode(example.ids[lo:hi])
        if task.prompt_style == "instruction":  # the code: not the fences, nor the end of text
            assert program == text.rstrip("\n")
            assert tokenizer.decode(example.ids[example.target_start : lo]) == "```python\n"
            assert tokenizer.decode(example.ids[hi:]) == "\n```" + tokenizer.eos_token
        else:  # the whole completion, not the end of text
            assert (hi, example.ids[hi]) == (len(example.ids) - 1, tokenizer.eos_token_id)
            assert lo == example.target_start
        assert count == hi - lo
        assert logprob == pytest.approx(_direct_logprob(model, example, lo, hi), rel=1e-4, abs=1e-3)
        assert logprob != pytest.approx(stored.logprob[list(stored.program_id).index(pid)], abs=1e-3)
