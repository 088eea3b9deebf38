"""FGO (training.loss_mask: executed): the loss covers only the tokens of program lines that ran in the tests."""

from __future__ import annotations

import json

import pytest
import torch

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.buffer.replay import Replay, ReplayConfig
from pper.errors import PperError
from pper.execution import Executor
from pper.execution.results import ProgramResult, TestResult
from pper.generation import load_model
from pper.tasks import AssertTests, Task, load_tasks
from pper.training import TrainingConfig
from pper.training.examples import build_example
from pper.training.trainer import PPERTrainer

# put in front of HumanEval/0's solution: a branch no test takes
BRANCH = "    if threshold < 0:\n        raise ValueError('negative threshold')\n"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer, _ = load_model("default")
    return model, tokenizer


@pytest.fixture(scope="module")
def humaneval0():
    return load_tasks("humaneval", limit=1)[0]


def _program_with_branch(task: Task) -> str:
    return task.prompt + BRANCH + task.solutions[0][len(task.prompt) :]


def _masked_text(ex, tokenizer) -> str:
    """The target text of the tokens with loss weight 0."""
    target = ex.ids[ex.target_start :]
    return tokenizer.decode([t for t, w in zip(target, ex.weights, strict=True) if w == 0.0])


def _run(task: Task, program: str):
    with Executor(workers=1, coverage=True, calibrate=False) as ex:
        return ex.run(task, program)


def test_the_mask_is_zero_exactly_on_the_untaken_branch(model_and_tokenizer, humaneval0):
    _, tokenizer = model_and_tokenizer
    program = _program_with_branch(humaneval0)
    result = _run(humaneval0, program)
    assert result.all_passed
    lines = program.split("\n")
    (untaken,) = [i for i, line in enumerate(lines, 1) if "negative threshold" in line]
    assert untaken - 1 in result.executed_lines and untaken not in result.executed_lines  # the `if` ran, not its body
    ex = build_example(humaneval0, program, tokenizer, 1024, result.executed_lines)
    # exactly the branch's tokens. A token counts for the line it ends in: this tokenizer writes a newline and
    # the next line's indentation as one token, so "\n        " (ending the `if` line, indenting `raise`) is the
    # branch's, and the newline after `raise` goes with the next line's indentation.
    assert _masked_text(ex, tokenizer) == "\n" + lines[untaken - 1]
    plain = build_example(humaneval0, program, tokenizer, 1024)
    assert plain.ids == ex.ids and plain.weights is None


def test_instruction_tasks_mask_code_lines_and_keep_the_fences(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    task = Task(
        id="t/add",
        prompt="Add two numbers.",
        tests=AssertTests(asserts=("assert add(1, 2) == 3",)),
        prompt_style="instruction",
    )
    program = "def add(a, b):\n    if a is None:\n        return 0\n    return a + b\n"
    result = _run(task, program)
    assert result.executed_lines == (1, 2, 4)
    ex = build_example(task, program, tokenizer, 1024, result.executed_lines)
    assert _masked_text(ex, tokenizer).strip() == "return 0"
    target = tokenizer.decode(ex.ids[ex.target_start :])
    assert target.startswith("```python\n") and target.endswith("```" + tokenizer.eos_token)
    assert ex.weights[0] == 1.0 and ex.weights[-1] == 1.0  # the fence and the end of text keep their weight


def test_the_loss_with_executed_equals_the_plain_loss_when_every_line_ran(model_and_tokenizer, humaneval0):
    model, tokenizer = model_and_tokenizer
    program = humaneval0.solutions[0]
    result = _run(humaneval0, program)
    lines = len(program.split("\n"))
    everything = tuple(range(1, lines + 1))
    trainer = PPERTrainer(model, tokenizer, TrainingConfig(method="full", precision="float32"))
    plain = build_example(humaneval0, program, tokenizer, 1024)
    masked_all = build_example(humaneval0, program, tokenizer, 1024, everything)
    partly = build_example(humaneval0, program, tokenizer, 1024, result.executed_lines)
    with torch.no_grad():
        a = trainer.loss_sum([plain]).item()
        b = trainer.loss_sum([masked_all]).item()
        c = trainer.loss_sum([partly]).item()
    assert b == pytest.approx(a, rel=1e-5)
    assert masked_all.trained_tokens == plain.trained_tokens
    # the reference's completion ran whole (its blank line is written in one token with the next line's
    # indentation), so its measured coverage gives the plain loss too
    assert c == pytest.approx(a, rel=1e-5) and partly.trained_tokens == plain.trained_tokens


def _buffer(path, task: Task, programs: list[tuple[str, ProgramResult]]) -> ReplayBuffer:
    buffer = ReplayBuffer(path)
    buffer.add_tasks([task])
    ids = buffer.add_programs(NewProgram(task.id, text, -5.0, 40, "m") for text, _ in programs)
    buffer.add_executions(Execution(pid, r) for pid, (_, r) in zip(ids, programs, strict=True))
    return buffer


def test_programs_none_of_whose_lines_ran_are_skipped_and_counted(humaneval0, tmp_path):
    model, tokenizer, _ = load_model("default")  # LoRA adapters go on a model of its own
    good = humaneval0.solutions[0]
    broken = "def has_close_elements(:\n"
    with _buffer(
        tmp_path / "b.sqlite", humaneval0, [(good, _run(humaneval0, good)), (broken, _run(humaneval0, broken))]
    ) as buffer:
        config = TrainingConfig(method="lora", steps=2, batch_size=4, loss_mask="executed")
        trainer = PPERTrainer(model, tokenizer, config, seed=0)
        trainer.begin_round(1, Replay.from_buffer(buffer, ReplayConfig(priority="uniform"), seed=0), 2)
        steps = list(trainer.run_round(buffer))
    assert len(steps) == 2
    assert sum(s.skipped for s in steps) > 0  # the broken program was drawn and left out
    assert all(s.target_tokens > 0 for s in steps)


def test_a_round_with_no_program_that_ran_stops_with_a_clear_error(humaneval0, tmp_path):
    model, tokenizer, _ = load_model("default")
    no_coverage = ProgramResult((TestResult("passed"),))  # tested without coverage
    with _buffer(tmp_path / "b.sqlite", humaneval0, [(humaneval0.solutions[0], no_coverage)]) as buffer:
        trainer = PPERTrainer(model, tokenizer, TrainingConfig(steps=1, loss_mask="executed"), seed=0)
        trainer.begin_round(1, Replay.from_buffer(buffer, ReplayConfig(), seed=0), 1)
        with pytest.raises(PperError, match="no program in the replay has a line that ran"):
            next(trainer.run_round(buffer))


def test_a_program_whose_coverage_was_cut_short_is_not_masked(model_and_tokenizer, humaneval0, tmp_path):
    model, tokenizer = model_and_tokenizer
    program = _program_with_branch(humaneval0)
    ran = _run(humaneval0, program)
    cut = ProgramResult(ran.tests, ran.time, ran.executed_lines, coverage_complete=False)  # lines may be missing
    with _buffer(tmp_path / "b.sqlite", humaneval0, [(program, cut)]) as buffer:
        trainer = PPERTrainer(model, tokenizer, TrainingConfig(steps=1, loss_mask="executed"), seed=0)
        (pid,) = [p.id for p in buffer.programs()]
        assert trainer._example(buffer, pid).weights is None  # every program token keeps its weight
    with _buffer(tmp_path / "c.sqlite", humaneval0, [(program, ran)]) as buffer:
        trainer = PPERTrainer(model, tokenizer, TrainingConfig(steps=1, loss_mask="executed"), seed=0)
        (pid,) = [p.id for p in buffer.programs()]
        assert 0.0 in trainer._example(buffer, pid).weights  # complete coverage: the untaken branch is masked


def test_loss_mask_is_validated():
    with pytest.raises(ValueError, match="loss_mask"):
        TrainingConfig(loss_mask="lines")
    assert json.loads(TrainingConfig().model_dump_json())["loss_mask"] == "program"


def test_tokens_are_on_the_lines_python_numbers_whatever_the_line_breaks():
    from pper.training.examples import token_lines

    # one token per character; "\u2028" (in a string) is not a line break for Python, "\r" and "\r\n" are
    program = 'a = 1\rb = "\u2028"\r\nc = 2\n'
    lines = token_lines(range(1, len(program) + 1), (0, len(program)), 0, program)
    assert lines == [1] * 6 + [2] * 9 + [3] * 6
    assert lines[program.index("c")] == 3 and lines[program.index("\u2028")] == 2
