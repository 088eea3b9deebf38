"""RLEF's repair turns: feedback from the public tests only, the chat template, trajectories in the buffer and their
export, training examples in the conversation, and a `pper run` with `feedback.turns: 3` killed mid-trajectory."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from pper.buffer import Execution, NewProgram, Repair, ReplayBuffer, to_hf_dataset
from pper.buffer.export import export_rows
from pper.execution import Executor
from pper.execution.results import ProgramResult, TestResult
from pper.generation import load_model
from pper.generation.prompts import (
    build_repair_prompt,
    extract_program,
    feedback_text,
    program_span,
    repair_messages,
    training_target,
)
from pper.repair import public_results
from pper.tasks import AssertTests, Task, load_tasks
from pper.training.examples import build_example
from pper.training.scoring import program_positions

SECRET = 'assert remove_Occ("hellolloll","l") == "helollol"'
TASK = Task(
    id="mbpp/11",
    prompt="Write a python function to remove first and last occurrence of a given character from the string.",
    entry_point="remove_Occ",
    tests=AssertTests(
        asserts=('assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("PHP","P") == "H"', SECRET)
    ),
    public_tests=AssertTests(
        asserts=('assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("PHP","P") == "H"')
    ),
)


def _feedback(task: Task, program: str, max_chars: int = 1000) -> str | None:
    with Executor(workers=1, calibrate=False) as ex:
        ((_, passed, total, feedback),) = public_results(ex, {task.id: task}, [_stored(task, program)], max_chars)
    assert total == len(task.public_tests)
    return feedback


def _stored(task: Task, text: str):
    from pper.buffer.store import Program

    return Program(1, task.id, text, -1.0, 1, "m", 1, None)


def test_feedback_names_the_failing_public_test_with_the_value_and_never_a_private_test():
    wrong = "def remove_Occ(s, ch):\n    return s\n"
    feedback = _feedback(TASK, wrong)
    assert feedback == (
        'The program failed this test:\nassert remove_Occ("hello","l") == "heo"\n\n'
        'Error: assert remove_Occ("hello","l") == "heo" failed: remove_Occ("hello","l") returned \'hello\''
    )
    # passes both public tests but fails the private one: no feedback, so no repair turn (the secret stays secret)
    public_only = "def remove_Occ(s, ch):\n    return {'hello': 'heo', 'PHP': 'H'}[s]\n"
    assert _feedback(TASK, public_only) is None
    with Executor(workers=1, calibrate=False) as ex:
        assert ex.run(TASK, public_only).pass_rate == pytest.approx(2 / 3)  # the private tests still judge it


def test_feedback_on_an_error_shows_the_exception_and_the_line_that_raised_it():
    program = "def remove_Occ(s, ch):\n    n = len(s)\n    return s[n // 0]\n"
    feedback = _feedback(TASK, program)
    assert "ZeroDivisionError: integer division or modulo by zero (at line 3 of the program)" in feedback
    assert feedback.endswith("Line 3: return s[n // 0]")
    assert len(_feedback(TASK, program, max_chars=60)) == 60
    syntax = _feedback(TASK, "def remove_Occ(s, ch):\n    return (s\n")  # a compile error names its line too
    assert "SyntaxError" in syntax and syntax.endswith("Line 2: return (s")


def test_a_long_public_test_is_clipped_before_what_went_wrong_and_keeps_its_expected_output():
    from pper.tasks import StdioCase, StdioTests

    grid = "\n".join("#." * 40 for _ in range(30))  # a 2.4 KB input, as in competitive programming
    tests = StdioTests((StdioCase(grid + "\n", "42\n"),))
    task = Task(id="t/grid", prompt="count", tests=tests, public_tests=tests)
    error = "expected '42', got '41'"
    text = feedback_text(task, ("wrong_answer",), [error], max_chars=1000)
    assert len(text) <= 1000 and text.endswith(f"Error: {error}")
    assert "...\nexpected output:\n42" in text  # the input clipped, the expected output shown
    long_error = "Traceback: " + "x" * 5000
    text = feedback_text(task, ("runtime_error",), [long_error], max_chars=1000)
    assert len(text) == 1000 and "expected output:\n42" in text and "Error: Traceback: xxx" in text


def test_feedback_reads_only_the_public_results():
    results = ("passed", "wrong_answer")
    assert "PHP" in feedback_text(TASK, results, [None, "x failed"])
    assert feedback_text(TASK, ("passed", "passed"), [None, None]) is None
    assert feedback_text(Task(id="t", prompt="p", tests=TASK.tests), results, [None, "e"]) is None  # no public tests


def test_a_repair_turn_is_a_chat_for_both_task_styles():
    humaneval = load_tasks("humaneval", limit=1)[0]
    turns = [("def f():\n    pass\n", "The program failed this test:\nassert f() == 1\n\nError: f() returned None")]
    for task in (TASK, humaneval):
        messages = repair_messages(task, turns)
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"] == "```python\ndef f():\n    pass\n```"
        assert messages[2]["content"].startswith(turns[0][1]) and "whole corrected program" in messages[2]["content"]
    assert humaneval.prompt.rstrip() in repair_messages(humaneval, turns)[0]["content"]
    _, tokenizer, _ = load_model("default")
    prompt = build_repair_prompt(humaneval, turns, tokenizer)
    assert prompt.stops == () and not prompt.continues  # no completion stop strings in a repair turn
    assert prompt.text.endswith("<|im_start|>assistant\n")
    reply = "Here is the fix:\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_program(prompt, reply) == "def f():\n    return 1\n"
    target = training_target(prompt, "def f():\n    return 1\n")
    assert target == "```python\ndef f():\n    return 1\n```"
    assert target[slice(*program_span(prompt, target))] == "def f():\n    return 1"


def test_a_repair_is_trained_in_its_conversation_with_the_loss_on_its_code():
    _, tokenizer, _ = load_model("default")
    turns = [
        ("def remove_Occ(s, ch):\n    return s\n", "The program failed this test:\nassert remove_Occ('a', 'a') == ''")
    ]
    prompt = build_repair_prompt(TASK, turns, tokenizer)
    program = "def remove_Occ(s, ch):\n    return s.strip(ch)\n"
    example = build_example(TASK, program, tokenizer, 1024, messages=prompt.messages)
    assert list(example.ids[: example.target_start]) == tokenizer(prompt.text).input_ids
    target = tokenizer.decode(example.ids[example.target_start :])
    assert target == "```python\n" + program.strip() + "\n```" + tokenizer.eos_token
    lo, hi = program_positions(TASK, example, tokenizer, messages=prompt.messages)
    assert tokenizer.decode(example.ids[lo:hi]).strip() == program.strip()  # P(t) over the code only


def _result(passed: int, total: int) -> ProgramResult:
    return ProgramResult(tuple(TestResult("passed" if i < passed else "wrong_answer") for i in range(total)))


def test_trajectories_in_the_buffer_and_their_export(tmp_path):
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks([TASK])
        root, other = buffer.add_programs(
            [NewProgram(TASK.id, "def remove_Occ(s, ch):\n    return s\n", -2.0, 4, "m", 1),
             NewProgram(TASK.id, "def remove_Occ(s, ch):\n    return ''\n", -2.0, 4, "m", 1)]
        )  # fmt: skip
        buffer.add_executions([Execution(root, _result(0, 3)), Execution(other, _result(1, 3))])
        assert [p.id for p in buffer.without_public_results(1, 3)] == [root, other]
        buffer.add_public_results([(root, 0, 2, "fb root"), (other, 2, 2, None)])
        assert buffer.without_public_results(1, 3) == []
        assert [(p.id, f) for p, f in buffer.to_repair(1, 1)] == [(root, "fb root")]  # `other` passed its public tests
        messages = repair_messages(TASK, [(buffer.program(root).text, "fb root")])
        same_text = NewProgram(TASK.id, buffer.program(root).text, -1.0, 3, "m", 1)  # the parent's text again
        (child,) = buffer.add_repairs([Repair(same_text, root, "fb root", messages, "```python\nx\n```")])
        assert child != root  # the same text in another conversation is its own candidate
        assert buffer.add_repairs([Repair(same_text, root, "fb root", messages, "```python\nx\n```")]) == [child]
        assert buffer.to_repair(1, 1) == []  # a parent with a repair is never repaired again
        turn = buffer.turn(child)
        assert (turn.turn, turn.root_id, turn.parent_id, turn.feedback) == (2, root, root, "fb root")
        assert buffer.program(child).turn == 2 and buffer.program(child).messages == messages
        assert [p.id for p in buffer.untested()] == [child]
        buffer.add_executions([Execution(child, _result(3, 3))])
        buffer.add_public_results([(child, 1, 2, "fb child")])
        (grandchild,) = buffer.add_repairs(
            [Repair(NewProgram(TASK.id, "pass\n", -1.0, 1, "m", 1), child, "fb child", messages, "a")]
        )
        assert (buffer.turn(grandchild).turn, buffer.turn(grandchild).root_id) == (3, root)
        assert buffer.stats()["turns_by_round"] == {
            "1": {"1": {"programs": 2, "passing": 0}, "2": {"programs": 1, "passing": 1}}
        }
        rows = {r["program_id"]: r for r in export_rows(buffer)}
        assert (rows[root]["turn"], rows[root]["messages"], rows[root]["parent_id"]) == (1, None, None)
        assert rows[child]["turn"] == 2 and rows[child]["parent_id"] == root
        assert rows[child]["messages"] == [*messages, {"role": "assistant", "content": "```python\nx\n```"}]
        dataset = to_hf_dataset(buffer)
        assert dataset[3]["messages"][-1] == {"role": "assistant", "content": "a"} and dataset[0]["messages"] is None
        # the same text given another prefix: another parent, whose repair with the same answer is its own program
        (twin,) = buffer.add_programs([NewProgram(TASK.id, "def remove_Occ(s, ch):\n    return s\n", -2.0, 4, "m", 1,
                                                  "def remove_Occ(s, ch):")])  # fmt: skip
        (twin_child,) = buffer.add_repairs([Repair(same_text, twin, "fb root", messages, "```python\nx\n```")])
        assert twin not in (root, child) and twin_child not in (root, child, twin)
        assert buffer.turn(twin_child).parent_id == twin


CONFIG = {
    "runs_dir": None,
    "tasks": {
        "source": "mbpp:PATH",
        "split": "train",
        "limit": 4,
        "eval_source": "mbpp:PATH",
        "eval_split": "test",
        "eval_limit": 1,
        "validation": 0,
    },
    "generation": {"k": 3, "max_new_tokens": 64, "batch_size": 1},
    "execution": {"workers": 1},
    "training": {"steps": 1, "batch_size": 2},
    "feedback": {"turns": 3},
    "rounds": 1,
    "evaluation": {"before": False},
}


def _count(run, sql: str) -> int:
    try:
        return sqlite3.connect(run / "buffer.sqlite").execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_run_with_repair_turns_resumes_mid_trajectory_after_kill_9(tmp_path, mbpp_path):
    tasks = {k: (v.replace("PATH", str(mbpp_path)) if isinstance(v, str) else v) for k, v in CONFIG["tasks"].items()}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "tasks": tasks, "runs_dir": str(tmp_path / "runs")}))
    run = tmp_path / "runs" / "rlef"
    cmd = [sys.executable, "-m", "pper", "run", "--config", str(config), "--name", "rlef"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    before: list = []
    while time.time() < deadline and proc.poll() is None:  # kill it once the first repair is stored
        if _count(run, "SELECT COUNT(*) FROM trajectories"):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = sqlite3.connect(run / "buffer.sqlite").execute("SELECT * FROM trajectories").fetchall()
            break
        time.sleep(0.2)
    assert before and proc.returncode == -signal.SIGKILL, f"never repaired: {proc.stderr.read()}"
    assert not (run / "checkpoints" / "round-1" / "info.json").exists()  # killed mid-round
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    db = sqlite3.connect(run / "buffer.sqlite")
    after = db.execute("SELECT * FROM trajectories").fetchall()
    assert set(before) <= set(after) and len(after) > len(before)  # finished turns kept, the rest done after
    assert db.execute(
        "SELECT COUNT(*) FROM (SELECT parent_id FROM trajectories GROUP BY parent_id HAVING COUNT(*) > 1)"
    ).fetchone() == (0,)
    with ReplayBuffer(run / "buffer.sqlite") as buffer:
        assert buffer.untested() == []
        turns = buffer.turns()
        assert max(t.turn for t in turns.values()) <= 3
        for t in turns.values():  # every repair answers a program that failed a public test, one turn later
            parent = buffer.turn(t.parent_id)
            assert t.turn == parent.turn + 1 and t.feedback.startswith("The program failed this test:")
            assert t.messages[-1]["content"].startswith(t.feedback)
        # every program before the last turn that failed a public test got its repair (when the model wrote code)
        assert buffer.to_repair(1, 1) == [] and buffer.to_repair(1, 2) == []
    exported = tmp_path / "buffer.jsonl"
    out = subprocess.run([sys.executable, "-m", "pper", "buffer", "export", str(run), "--jsonl", str(exported)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    repaired = [r for r in rows if r["turn"] > 1]
    assert repaired and all(r["messages"][-1]["role"] == "assistant" for r in repaired)
    report = (run / "report.md").read_text()
    assert "Programs per repair turn" in report and "came from repair turns" in report


def test_repair_settings_that_would_do_nothing_are_refused_or_warned(tmp_path):
    from pper.config import load_config, validate_config
    from pper.errors import PperError
    from pper.pipeline import prepare

    with pytest.raises(PperError, match="greedy decoding writes one program per turn"):
        validate_config({"feedback": {"turns": 2, "candidates": 4}})
    validate_config({"feedback": {"turns": 2, "candidates": 4, "mode": "sample"}})
    path = tmp_path / "tasks.jsonl"  # tasks without public tests: no feedback can be written
    hidden = [Task(id=f"t/{i}", prompt="Write f.", tests=AssertTests(("assert f() == 1",))) for i in range(4)]
    path.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in hidden))
    overrides = {"tasks.source": f"jsonl:{path}", "tasks.holdout": 0, "tasks.validation": 0,
                 "runs_dir": str(tmp_path / "runs"), "feedback.turns": 2}  # fmt: skip
    with pytest.warns(UserWarning, match="none of the 4 training tasks has public tests"):
        prepare(load_config(overrides=overrides))
