"""Multi-turn evaluation (RLEF): repairs of the tasks that fail a public test, scores after each turn on the private
tests, the independent-samples curve at equal budget, resumption, and `pper eval --turns`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pper.evaluation.evaluate import results_path
from pper.evaluation.multiturn import evaluate_turns, turn_path
from pper.execution import Executor
from pper.generation import load_model, transformers_sampler
from pper.generation.config import GenerationConfig
from pper.jsonl import read_jsonl
from pper.report import turn_tasks_line
from pper.tasks import load_tasks


@pytest.fixture(scope="module")
def sampler():
    config = GenerationConfig(max_new_tokens=48, batch_size=4)
    return transformers_sampler(config, 0, load_model("default"))


@pytest.mark.slow
def test_repair_turns_are_scored_on_the_private_tests_after_each_turn(tmp_path, sampler, mbpp_path):
    tasks = load_tasks("humaneval", limit=3)  # all three have public tests (docstring examples)
    quoted = load_tasks(f"mbpp:{mbpp_path}", "test", 2)[1]  # its private tests are its public ones
    assert quoted.public_tests and quoted.hidden_tests == 0
    tasks.append(quoted)
    samples = tmp_path / "samples.jsonl"
    with Executor(workers=1) as ex:
        result = evaluate_turns(tasks, samples, ex, sampler, turns=2, independent=True, show_progress=False)
        first = list(read_jsonl(results_path(samples)))
        second = list(read_jsonl(results_path(turn_path(samples, 2))))
        public = {r["task_id"]: ex.run(next(t for t in tasks if t.id == r["task_id"]).public_view(), r["program"])
                  for r in first}  # fmt: skip
    by_id = {t.id: t for t in tasks}
    assert [t["turn"] for t in result["turns"]] == [1, 2] and result["turns"][0]["repaired"] == 0
    # every task is evaluated and may be repaired; the per-turn scores leave out the one without hidden tests
    assert result["overall"]["tasks"] == 4 and [t["tasks"] for t in result["turns"]] == [3, 3]
    assert result["turn_tasks"] == {"judged": 3, "private_all_public": [quoted.id]}
    assert "over the 3 tasks with hidden tests; left out: 1 whose private tests are all public" in turn_tasks_line(
        result
    )
    # the tasks whose first program failed a public test, and only those, were repaired at turn 2
    assert {r["task_id"] for r in second if r["repaired"]} == {t for t, res in public.items() if not res.all_passed}
    assert sorted(r["task_id"] for r in second) == sorted(by_id)  # every task has its program after turn 2
    for row in second:
        assert row["total_tests"] == len(by_id[row["task_id"]].tests)  # judged by the private tests
        if row["repaired"]:
            assert row["messages"][-1]["content"].startswith("The program failed this test:")
            assert row["history"][0][0] == next(r["program"] for r in first if r["task_id"] == row["task_id"])
        else:
            assert row["program"] == next(r["program"] for r in first if r["task_id"] == row["task_id"])
    mean = sum(r["pass_rate"] for r in second if r["task_id"] != quoted.id) / 3
    assert result["turns"][1]["pass_rate"] == pytest.approx(mean)
    independent = result["independent"]
    assert independent["n"] == 2 and independent["samples"] == 6 and {"pass@1", "pass@2"} <= set(independent)
    assert set(result["seconds"]) == {"sampling", "testing", "repair", "independent"}
    assert all(v > 0 for v in result["seconds"].values())
    # a killed evaluation resumes: drop the last task of turn 2 and run again, it is redone once
    path = turn_path(samples, 2)
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:-1]) + "\n")
    results_path(path).write_text("\n".join(results_path(path).read_text().splitlines()[:-1]) + "\n")
    with Executor(workers=1) as ex:
        again = evaluate_turns(tasks, samples, ex, sampler, turns=2, show_progress=False)
    assert len(path.read_text().splitlines()) == 4 and again["turns"][1]["tasks"] == 3


def test_pper_eval_has_turns_and_refuses_them_without_a_model(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "pper", "eval", "--help"], capture_output=True, text=True).stdout
    assert "--turns" in help_text and "--independent" in help_text
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "pper", "eval", "--tasks", "humaneval", "--samples", str(samples), "--turns", "2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "--turns repairs a greedy program" in out.stderr


def test_multi_turn_evaluation_needs_greedy_mode():
    from pper.config import validate_config
    from pper.errors import PperError

    with pytest.raises(PperError, match="turns > 1 evaluates a greedy first program"):
        validate_config({"evaluation": {"turns": 2, "mode": "sample", "n": 2}})


def test_turn_scores_leave_out_tasks_whose_private_tests_are_all_public(tmp_path, mbpp_path):
    from pper.errors import PperError
    from pper.evaluation.multiturn import turn_tasks

    mbpp = load_tasks("humaneval", limit=2) + load_tasks(f"mbpp:{mbpp_path}", "test", 12)
    judged, quoted = turn_tasks(mbpp)
    assert [t.id for t in judged] == [t.id for t in mbpp if t.id.startswith("HumanEval") or t.hidden_tests]
    assert quoted == sorted(t.id for t in mbpp if not t.hidden_tests) and len(quoted) > 0
    only_quoted = [t for t in mbpp if t.id in quoted]
    with pytest.raises(PperError, match="none of the .* tasks has a private test beyond its public ones"):
        evaluate_turns(only_quoted, tmp_path / "s.jsonl", None, None, turns=2, show_progress=False)
    assert not (tmp_path / "s.jsonl").exists()  # refused before sampling
