import json
import subprocess
import sys

from pper.buffer import NewProgram, ReplayBuffer
from pper.execution import Executor
from pper.pipeline import execute_untested
from pper.tasks import load_tasks


def test_pper_test_writes_results_and_a_summary(tmp_path):
    tasks = load_tasks("humaneval", limit=3)
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": t.id, "completion": t.solutions[0][len(t.prompt) :]} for t in tasks]
    rows.append({"task_id": tasks[0].id, "completion": "    return 0\n", "extra": 1})
    rows.append({"task_id": tasks[1].id, "program": "def separate_paren_groups(s):\n    return []\n"})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run(
        [sys.executable, "-m", "pper", "test", str(samples), "--tasks", "humaneval", "--json", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["samples"], summary["passed"]) == (5, 3)
    assert "5 samples: 3 pass every test" in done.stderr
    results = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, True, True, False, False]
    assert results[3]["extra"] == 1 and results[3]["result"].startswith("failed: assert candidate")
    # returning 0 satisfies the three asserts that expect False (0 == False), and fails the four others
    assert results[3]["verdicts"].count("wrong_answer") == 4 and results[3]["pass_rate"] == 3 / 7
    assert results[0]["pass_rate"] == 1.0


def test_pper_test_names_a_bad_sample_line(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        '{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/999", "completion": "x"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "pper", "test", str(samples), "--tasks", "humaneval"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "s.jsonl, line 2: field 'task_id': unknown task 'HumanEval/999'" in done.stderr


def test_the_testing_step_fills_the_buffer(tmp_path):
    tasks = load_tasks("humaneval", limit=4)
    with ReplayBuffer(tmp_path / "buffer.sqlite") as buffer, Executor(workers=2) as executor:
        buffer.add_tasks(tasks)
        ids = buffer.add_programs(
            [NewProgram(t.id, t.solutions[0], -1.0, 10, "ref") for t in tasks]
            + [NewProgram(tasks[0].id, tasks[0].prompt + "    return True\n", -2.0, 5, "m")]
        )
        assert execute_untested(buffer, executor, show_progress=False) == 5
        assert execute_untested(buffer, executor, show_progress=False) == 0  # nothing is tested twice
        programs = {p.id: p for p in buffer.programs()}
        assert [programs[i].pass_rate for i in ids[:4]] == [1.0] * 4
        wrong = programs[ids[4]]
        # `return True` passes the four asserts that expect True
        assert wrong.verdicts.count("passed") == 4 and wrong.pass_rate == 4 / 7 and "returned True" in wrong.error
