"""Multi-turn evaluation (RLEF): a greedy first program per task, then up to T - 1 repair turns on public-test feedback.

Turn 1 is the single-turn evaluation (`evaluate`, greedy: `samples.jsonl`). At turn t >= 2, every task whose
program after turn t - 1 fails one of its **public** tests gets a repair turn: the model sees the conversation
(`prompts.build_repair_prompt`) and writes a whole program, greedily. A task whose program passes its public tests,
or that has none, keeps its program. After each turn, every task's current program is judged by its **private**
tests (`Task.tests`), and the metrics after turn t are computed over the tasks with a private test beyond their
public ones (`Task.hidden_tests`), the same tasks at every turn:

    pass rate(t), strict accuracy(t) = pass@1(t)   over those tasks' programs held after turn t.

A task whose private tests are all public (an MBPP row without challenge tests: its tests are the asserts its prompt
shows) is still evaluated and repaired, but left out of the per-turn metrics (`turn_tasks` lists them): after a
repair turn its score would rest only on tests the feedback may have quoted. With no task left, the evaluation is
refused before it samples. Turn 1's metrics over all tasks are the single-turn evaluation's (`overall`).

`samples.turn-t.jsonl` holds every task's program after turn t (`repaired`: whether turn t wrote it; the chat it
answered in `messages`), tested into `samples.turn-t.jsonl_results.jsonl` like any samples file, so per-task
figures of any turn feed the paired comparisons of `pper experiment`; `history` lists the (program, feedback) turns
before it. Each file is appended task by task, so a
killed evaluation resumes where it stopped.

RLEF's comparison at equal budget (`independent`): T independent samples per task of the per-turn metrics
(sampling at the generation temperature, `samples.independent.jsonl`), scored by the unbiased pass@t for
t = 1..T: the chance that at least one of t independent programs passes every private test, against the strict
accuracy after t turns of repair.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import PperError
from ..execution.samples import completion_of
from ..files import write_atomic
from ..generation.prompts import build_repair_prompt, public_feedback
from ..jsonl import append_jsonl, read_jsonl
from ..tasks import Task
from .evaluate import add_seconds, earlier_seconds, evaluate, metrics, results_path, test_samples_file


def turn_path(samples_path: str | Path, turn: int) -> Path:
    """The samples file of the programs held after `turn` (turn 1: the single-turn samples file itself)."""
    path = Path(samples_path)
    return path if turn == 1 else path.with_name(f"{path.stem}.turn-{turn}{path.suffix}")


def evaluate_turns(
    tasks: Sequence[Task],
    samples_path: str | Path,
    executor: Any,
    sampler: Any,
    turns: int,
    max_chars: int = 1000,
    independent: bool = False,
    metrics_path: str | Path | None = None,
    info: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `tasks` over `turns` turns (see the module docstring); returns (and writes to `metrics_path`) the
    single-turn metrics of turn 1 with a `turns` list (the metrics after each turn over `turn_tasks`, and how many
    of those tasks were repaired at it), `turn_tasks` (how many tasks the per-turn metrics count, the ids of those
    left out) and, with `independent`, the `independent` samples' pass@1..pass@T. `seconds` has turn 1's sampling
    and testing, the repair turns' (`repair`) and the independent samples' (`independent`), added up over
    invocations as `evaluate` does."""
    samples_path = Path(samples_path)
    judged, quoted = turn_tasks(tasks)
    if not judged:
        raise PperError(
            f"none of the {len(tasks)} tasks has a private test beyond its public ones (e.g. MBPP rows without "
            "challenge tests: their tests are the asserts the prompt shows), so a score after a repair turn would "
            "rest only on tests the feedback quotes; evaluate turns on tasks with hidden tests (HumanEval, "
            "CodeContests, MBPP rows with a challenge_test_list)"
        )
    seconds = earlier_seconds(metrics_path, samples_path)
    first = evaluate(tasks, samples_path, executor, sampler, "greedy", 1, (1,), None, info, show_progress)
    add_seconds(seconds, first["seconds"])
    rows = read_jsonl(results_path(samples_path))
    per_turn = [{"turn": 1, "repaired": 0, **_overall(rows, judged)}]
    start = time.perf_counter()
    for turn in range(2, turns + 1):
        rows = _repair_turn(tasks, turn_path(samples_path, turn - 1), turn_path(samples_path, turn), executor,
                            sampler, max_chars, show_progress)  # fmt: skip
        repaired = sum(r.get("repaired", False) for r in rows if r["task_id"] not in quoted)
        per_turn.append({"turn": turn, "repaired": repaired, **_overall(rows, judged)})
    add_seconds(seconds, {"repair": time.perf_counter() - start})
    result = {**first, "turns": per_turn, "turn_tasks": {"judged": len(judged), "private_all_public": quoted}}
    if independent:
        path = samples_path.with_name(f"{samples_path.stem}.independent{samples_path.suffix}")
        ks = list(range(1, turns + 1))
        sampled = evaluate(judged, path, executor, sampler, "sample", turns, ks, None, None, show_progress)
        result["independent"] = {"samples_file": str(path), "n": turns, **sampled["overall"]}
        add_seconds(seconds, {"independent": sum(sampled["seconds"].values())})
    result["seconds"] = seconds
    if metrics_path is not None:
        write_atomic(metrics_path, json.dumps(result, indent=2) + "\n")
    return result


def turn_tasks(tasks: Sequence[Task]) -> tuple[list[Task], list[str]]:
    """(the tasks the per-turn metrics are computed over: those with a private test beyond their public ones, the
    ids of the others, sorted)."""
    judged = [t for t in tasks if t.hidden_tests]
    return judged, sorted(t.id for t in tasks if not t.hidden_tests)


def _overall(rows: list[dict[str, Any]], tasks: Sequence[Task]) -> dict[str, Any]:
    """The overall metrics of the rows of `tasks` (of those that have rows)."""
    ids = {t.id for t in tasks}
    kept = [r for r in rows if r["task_id"] in ids]
    return metrics(kept, [t for t in tasks if t.id in {r["task_id"] for r in kept}])["overall"]


def _repair_turn(
    tasks: Sequence[Task],
    before: Path,
    after: Path,
    executor: Any,
    sampler: Any,
    max_chars: int,
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Write turn `after`'s samples from turn `before`'s (each task once, resumable), test them, return their
    results."""
    from ..progress import progress

    by_id = {t.id: t for t in tasks}
    previous = {r["task_id"]: r for r in read_jsonl(before)}
    done = {r["task_id"] for r in read_jsonl(after)}
    todo = [by_id[t] for t in previous if t not in done and t in by_id]
    feedback = _feedback(todo, previous, executor, max_chars)
    keep = [t for t in todo if feedback.get(t.id) is None]
    append_jsonl(after, [{**previous[t.id], "repaired": False} for t in keep])
    repair = [t for t in todo if feedback.get(t.id) is not None]
    tokenizer = getattr(sampler, "tokenizer", None)
    history = {t.id: [*previous[t.id].get("history", []), [previous[t.id]["program"], feedback[t.id]]] for t in repair}
    prompts = [build_repair_prompt(t, [tuple(h) for h in history[t.id]], tokenizer) for t in repair]
    sampled = sampler.sample_prompts(prompts, "greedy", 1)
    if show_progress:
        sampled = progress(sampled, len(prompts), f"evaluation repair turn {after.stem.rsplit('-', 1)[-1]}", "tasks")
    for i, candidates in sampled:
        task, prompt = repair[i], prompts[i]
        row = {**previous[task.id], "repaired": False}
        if candidates:  # no program written: the task keeps its last one, not repaired
            c = candidates[0]
            row.update(repaired=True, messages=list(prompt.messages), history=history[task.id])
            row.update(program=c.program, completion=completion_of(task, c.program), logprob=c.logprob,
                       num_tokens=c.num_tokens)  # fmt: skip
        append_jsonl(after, [row])
    return test_samples_file(after, tasks, executor, show_progress)


def _feedback(tasks: Sequence[Task], rows: dict[str, dict[str, Any]], executor: Any, max_chars: int) -> dict[str, str]:
    """Task id -> the feedback on its current program from its public tests, for the tasks with one that fails."""
    jobs = [(t, rows[t.id]["program"]) for t in tasks]
    return {tasks[i].id: text for i, _, text in public_feedback(executor, jobs, max_chars) if text is not None}
