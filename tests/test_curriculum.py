"""CCCS: cut points and stages of reference solutions, prefilled prompts, stages kept in the buffer, and a
`pper run` with the curriculum and FGO killed in its second round and resumed on the same stages."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.curriculum import CurriculumConfig, cut_points, first_stage, next_stage, stage_prefix, stages_for_round
from pper.execution.results import ProgramResult, TestResult
from pper.generation import build_prompt, load_model
from pper.generation.hf import TransformersSampler
from pper.generation.prompts import extract_program, program_span, training_target
from pper.tasks import AssertTests, Task, load_tasks
from pper.training.examples import build_example

REFERENCE = "def first_even(xs):\n    for x in xs:\n        if x % 2 == 0:\n            return x\n    return None\n"
MBPP_LIKE = Task(
    id="t/even",
    prompt="Return the first even number of a list.",
    tests=AssertTests(asserts=("assert first_even([1, 4, 6]) == 4", "assert first_even([1]) is None")),
    prompt_style="instruction",
    solutions=(REFERENCE,),
)


def test_cut_points_are_statement_starts_nested_ones_included():
    # def, for, if, return x, return None: five statements, each on its own line
    line_starts = [0] + [i + 1 for i, c in enumerate(REFERENCE[:-1]) if c == "\n"]
    assert len(line_starts) == 5 and cut_points(REFERENCE, "statements") == line_starts
    multi = "x = [\n    1,\n]\n\ny = 2\n"
    assert cut_points(multi, "statements") == [0, 16]  # a statement over several lines is one unit
    assert cut_points(multi, "lines") == [0, 6, 13, 16]


@pytest.mark.parametrize(
    "stage, prefix",
    [
        # 5 units; stage s removes the last ceil(5 * s / 4) of them
        (1, "def first_even(xs):\n    for x in xs:\n        if x % 2 == 0:"),  # 2 removed
        (2, "def first_even(xs):\n    for x in xs:"),  # 3 removed
        (3, "def first_even(xs):"),
        (4, ""),  # stage S: the whole task
    ],
)
def test_stage_s_gives_the_reference_without_its_last_s_over_S_units(stage, prefix):
    assert stage_prefix(MBPP_LIKE, stage, CurriculumConfig(enabled=True, stages=4)) == prefix


def test_a_completion_task_is_cut_past_its_prompt():
    task = load_tasks("humaneval", limit=1)[0]
    prefix = stage_prefix(task, 1, CurriculumConfig(enabled=True))
    assert prefix.startswith("\n    for idx, elem in enumerate(numbers):")  # the body, never the prompt
    assert task.solutions[0].startswith(task.prompt.rstrip() + prefix)
    assert stage_prefix(Task(id="t/none", prompt="x", tests=MBPP_LIKE.tests), 1, CurriculumConfig()) == ""


def test_a_task_advances_at_the_threshold_and_never_goes_back_or_past_the_last_stage():
    config = CurriculumConfig(enabled=True, stages=3, advance_at=0.5)
    assert next_stage(1, [True, False], config) == 2
    assert next_stage(1, [True, False, False], config) == 1
    assert next_stage(2, [], config) == 2  # nothing sampled at the stage: it stays
    assert next_stage(3, [True], config) == 3


def test_stages_are_decided_once_per_round_and_kept_in_the_buffer(tmp_path):
    config = CurriculumConfig(enabled=True, stages=4)
    no_reference = Task(id="t/free", prompt="Anything.", tests=MBPP_LIKE.tests, prompt_style="instruction")
    tasks = [MBPP_LIKE, no_reference]
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks(tasks)
        assert stages_for_round(buffer, tasks, 1, config) == {"t/even": 1, "t/free": 4}
        prefix = stage_prefix(MBPP_LIKE, 1, config)
        program = prefix + "\n    return None\n"  # wrong: returns None for [1, 4, 6]
        ids = buffer.add_programs(
            [
                NewProgram("t/even", REFERENCE, -1.0, 5, "m", 1, prefix),
                NewProgram("t/even", program, -1.0, 5, "m", 1, prefix),
            ]
        )
        passed = ProgramResult((TestResult("passed"), TestResult("passed")))
        failed = ProgramResult((TestResult("wrong_answer"), TestResult("passed")))
        buffer.add_executions([Execution(ids[0], passed), Execution(ids[1], failed)])
        # 1 of 2 programs at stage 1 passed everything: 0.5 >= advance_at
        assert stages_for_round(buffer, tasks, 2, config) == {"t/even": 2, "t/free": 4}
        assert buffer.stages(2) == {"t/even": 2, "t/free": 4}
        stricter = CurriculumConfig(enabled=True, stages=4, advance_at=1.0)
        assert stages_for_round(buffer, tasks, 2, stricter)["t/even"] == 2  # decided once: kept
        assert buffer.stage_counts() == {1: {1: 1, 4: 1}, 2: {2: 1, 4: 1}}
        density = buffer.density()[1]
        assert density["tasks_with_passing_program"] == 1 and density["share_passing_a_test"] == 1.0


def test_advancement_counts_every_sample_of_the_round_before_one_stored_earlier_included(tmp_path):
    config = CurriculumConfig(enabled=True, stages=4, advance_at=0.5)
    prefix = stage_prefix(MBPP_LIKE, 1, config)
    right, wrong, other = REFERENCE, prefix + "\n    return None\n", prefix + "\n    return 0\n"
    passed = ProgramResult((TestResult("passed"), TestResult("passed")))
    failed = ProgramResult((TestResult("wrong_answer"), TestResult("passed")))

    def sample(buffer, round, texts):
        ids = buffer.add_sampled(
            "t/even", "m", round, [NewProgram("t/even", x, -1.0, 5, "m", round, prefix) for x in texts]
        )
        buffer.add_executions([Execution(i, passed if buffer.program(i).text == right else failed) for i in set(ids)
                               if buffer.program(i).result is None])  # fmt: skip

    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks([MBPP_LIKE])
        assert stages_for_round(buffer, [MBPP_LIKE], 1, config) == {"t/even": 1}
        sample(buffer, 1, [right, wrong, wrong])  # 1 of 3 passing: stays
        assert stages_for_round(buffer, [MBPP_LIKE], 2, config) == {"t/even": 1}
        sample(buffer, 2, [right, right, right, other])  # the passing program again, stored in round 1
        assert [(p.text, n) for p, n in buffer.round_samples("t/even", 2)] == [(right, 3), (other, 1)]
        assert stages_for_round(buffer, [MBPP_LIKE], 3, config) == {"t/even": 2}  # 3 of 4 passing: up


def test_a_reference_starting_with_blank_lines_is_cut_as_its_program_is_extracted():
    from dataclasses import replace

    config = CurriculumConfig(enabled=True)
    padded = replace(MBPP_LIKE, solutions=("\n  \n" + REFERENCE,))
    assert stage_prefix(padded, 2, config) == stage_prefix(MBPP_LIKE, 2, config)
    prompt = build_prompt(padded, None, stage_prefix(padded, 2, config))
    assert not training_target(prompt, REFERENCE).startswith("```")  # the given prefix is not trained again


def test_the_same_text_from_two_stages_is_two_candidates(tmp_path):
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks([MBPP_LIKE])
        whole, staged = buffer.add_programs(
            [
                NewProgram("t/even", REFERENCE, -1.0, 5, "m"),
                NewProgram("t/even", REFERENCE, -1.0, 5, "m", 1, "def first_even(xs):"),
            ]
        )
        assert whole != staged and buffer.program(staged).prefix == "def first_even(xs):"
        with pytest.raises(ValueError, match="must contain the prefix"):
            buffer.add_programs([NewProgram("t/even", "pass\n", -1.0, 1, "m", 1, "def other():")])


def test_a_prefilled_instruction_prompt_extracts_and_trains_the_whole_program():
    _, tokenizer, _ = load_model("default")
    prefix = stage_prefix(MBPP_LIKE, 2, CurriculumConfig(enabled=True))
    prompt = build_prompt(MBPP_LIKE, tokenizer, prefix)
    assert prompt.text.endswith("<|im_start|>assistant\n```python\n" + prefix) and prompt.prefix == prefix
    completion = "\n        if x % 2 == 0:\n            return x\n    return None\n```\nThis returns the first even."
    program = extract_program(prompt, completion)
    assert program == REFERENCE
    target = training_target(prompt, program)
    assert target == completion[: completion.index("```") + 3]  # what the model wrote after the prefix
    start, end = program_span(prompt, target)
    assert target[start:end] == completion[: completion.index("\n```")]  # the code, not the closing fence
    ex = build_example(MBPP_LIKE, program, tokenizer, 1024, prefix=prefix)
    assert tokenizer.decode(ex.ids[: ex.target_start]) == prompt.text
    assert tokenizer.decode(ex.ids[ex.target_start :]) == target + tokenizer.eos_token


def test_the_local_sampler_continues_the_prefix_and_scores_only_its_completion():
    model, tokenizer, name = load_model("default")
    task = load_tasks("humaneval", limit=1)[0]
    prefix = stage_prefix(task, 1, CurriculumConfig(enabled=True))
    sampler = TransformersSampler(model, tokenizer, name, batch_size=2, max_new_tokens=24)
    [(_, with_prefix)] = list(sampler.sample([task], "greedy", 1, prefixes={task.id: prefix}))
    [(_, plain)] = list(sampler.sample([task], "greedy", 1))
    (c,) = with_prefix
    assert c.prefix == prefix and c.program.startswith(task.prompt.rstrip() + prefix)
    assert c.program == task.prompt.rstrip() + prefix + c.completion.rstrip() + "\n"
    assert c.num_tokens == len(c.tokens)  # the completion's tokens only, not the prefix's
    assert plain[0].prefix == "" and plain[0].program != c.program


CONFIG = {
    "runs_dir": None,
    # 4 held out, 4 training tasks (HumanEval has references), no validation split
    "tasks": {"source": "humaneval", "limit": 8, "holdout": 0.5, "validation": 0},
    "generation": {"k": 2, "max_new_tokens": 32, "batch_size": 1},
    "execution": {"workers": 1},
    "training": {"steps": 1, "batch_size": 2, "loss_mask": "executed"},
    "curriculum": {"enabled": True, "stages": 2, "advance_at": 0.5},
    "rounds": 2,
    "evaluation": {"before": False, "rounds": "last"},
}


def _count(run, sql: str) -> int:
    try:
        return sqlite3.connect(run / "buffer.sqlite").execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_curriculum_run_with_fgo_resumes_on_its_stages_after_kill_9(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "runs_dir": str(tmp_path / "runs")}))
    run = tmp_path / "runs" / "cccs"
    cmd = [sys.executable, "-m", "pper", "run", "--config", str(config), "--name", "cccs"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    before = {}
    while time.time() < deadline and proc.poll() is None:  # kill it once round 2 has sampled a task
        if _count(run, "SELECT COUNT(*) FROM samplings WHERE round = 2"):
            with ReplayBuffer(run / "buffer.sqlite") as buffer:
                before = {1: buffer.stages(1), 2: buffer.stages(2)}
            break
        time.sleep(0.5)
    assert before, f"round 2 was never sampled: {proc.stderr.read() if proc.poll() is not None else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    with ReplayBuffer(run / "buffer.sqlite") as buffer:
        assert {1: buffer.stages(1), 2: buffer.stages(2)} == before  # the same stages after the kill
        tasks = {t.id: t for t in buffer.tasks()}
        curriculum = CurriculumConfig(**CONFIG["curriculum"])
        # stage 1 first, unless the reference is too short to cut (then the whole task, stage 2)
        assert before[1] == {t: first_stage(tasks[t], curriculum) for t in before[1]}
        assert 1 in before[1].values()
        for p in buffer.programs():
            assert p.prefix == stage_prefix(tasks[p.task_id], before[p.round][p.task_id], curriculum)
            assert p.result is not None and p.result.executed_lines is not None  # FGO: coverage collected
        stats = buffer.stats()
    assert set(stats["stages_by_round"]) == {"1", "2"} and set(stats["density_by_round"]) == {"1", "2"}
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "step" for e in events) >= 2
    exported = tmp_path / "buffer.jsonl"
    out = subprocess.run([sys.executable, "-m", "pper", "buffer", "export", str(run), "--jsonl", str(exported)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert any(r["prefix"] for r in rows) and all(r["executed_lines"] is not None for r in rows)
    report = (run / "report.md").read_text()
    assert "Buffer density per round" in report and "stage 1" in report


def test_the_curriculum_section_is_validated_with_clear_errors(tmp_path):
    from pper.config import load_config
    from pper.errors import PperError

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"curriculum": {"enabled": True, "unit": "words"}}))
    with pytest.raises(PperError, match="curriculum.unit"):
        load_config(path)
    path.write_text(yaml.safe_dump({"curriculum": {"stages": 0}}))
    with pytest.raises(PperError, match="curriculum.stages"):
        load_config(path)
    path.write_text(yaml.safe_dump({"training": {"loss_mask": "lines"}}))
    with pytest.raises(PperError, match="training.loss_mask"):
        load_config(path)
    shown = yaml.safe_load(load_config().to_yaml())
    assert shown["curriculum"] == {
        "enabled": False,
        "stages": 4,
        "unit": "statements",
        "advance_at": 0.5,
        "prefill_stops": True,
    }
    assert shown["training"]["loss_mask"] == "program"
