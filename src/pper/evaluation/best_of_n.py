"""Best-of-n evaluation (`pper eval --select`): n programs sampled per task, one chosen without the private tests.

For each task, `n` programs are sampled at the generation temperature (seeded) and every one is tested on the
task's private tests (`evaluate`, so `samples.jsonl` and its results file are the usual ones and resume the
same way). On those same samples:

* pass@1: the unbiased estimate from the n samples, the mean over tasks of the fraction of samples that pass
  (`metrics.pass_at_k`), with the mean pass rate of all samples;
* best of n by log-probability: per task the sample with the highest mean token log-probability lp = logP /
  tokens (ties: the earlier sample; a sample without one ranks last);
* best of n by the PRM (`select` "prm"): the sample with the highest mean PRM line score, ties by lp
  (`pper.prm.rerank`, the order reranking uses; a sample without a scored line ranks last);
* oracle: the sample that passes (else the highest pass rate): its strict accuracy is pass@n, the ceiling of
  any choice.

Each choice is scored like a one-sample evaluation (`metrics.summarize`: strict accuracy and pass rate over
the chosen programs). The choices are compared task by task (`differences`, with paired bootstrap intervals over
tasks, `stats.paired_bootstrap`): each criterion against a random pick (per task, the fraction of its samples
that pass and their mean pass rate: what pass@1 averages), and the PRM against log-probability. How well each
criterion's value tells passing samples from failing ones (`separation`): its ROC AUC over all samples for
"passes every test" (`pper.prm.metrics.roc_auc`; pooled across tasks, so it also credits ranking easy tasks'
samples above hard ones'), beside the number of tasks with both a passing and a failing sample, the only tasks
where a choice can matter. The per-task choices, with the values they were made on, are written to
`<samples>.best_of_n.jsonl`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import PperError
from ..files import write_atomic
from ..jsonl import read_jsonl
from ..prm.rerank import mean_logprob, mean_score, ranking
from ..tasks import Task
from .evaluate import add_seconds, earlier_seconds, evaluate, results_path
from .metrics import Scored, summarize

SELECTS = ("logprob", "prm")


def choices_path(samples_path: str | Path) -> Path:
    """Where the per-task choices of a best-of-n evaluation of `samples_path` are written."""
    path = Path(samples_path)
    return path.with_name(f"{path.stem}.best_of_n.jsonl")


def by_task(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Result rows grouped by task, each task's in sample order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["sample"]):
        groups[row["task_id"]].append(row)
    return dict(groups)


def logprobs(rows: Sequence[dict[str, Any]]) -> list[float | None]:
    """lp of each sample (None where the sample has no log-probability or no token)."""
    return [mean_logprob(r.get("logprob"), r.get("num_tokens")) for r in rows]


def choose(rows: Sequence[dict[str, Any]], criterion: str, prm_means: Sequence[float | None] | None = None) -> int:
    """The index of the sample `criterion` ("logprob", "prm" or "oracle") picks among a task's `rows`."""
    lps = logprobs(rows)
    if criterion == "logprob":
        return ranking([None] * len(rows), lps)[0]
    if criterion == "prm":
        if prm_means is None:
            raise ValueError("choosing by the PRM needs each sample's mean PRM line score")
        return ranking(list(prm_means), lps)[0]
    if criterion == "oracle":
        return max(range(len(rows)), key=lambda i: (bool(rows[i]["passed"]), float(rows[i]["pass_rate"]), -i))
    raise ValueError(f"criterion must be logprob, prm or oracle, got {criterion!r}")


def check_samples(samples_path: str | Path, n: int) -> None:
    """Refuse a samples file (one being resumed) that holds a task with other than `n` samples: another evaluation
    (greedy, or another --n) wrote it, and its tasks would count as sampled."""
    counts: dict[str, int] = defaultdict(int)
    for row in read_jsonl(samples_path):
        counts[row.get("task_id")] += 1
    wrong = next(((t, c) for t, c in counts.items() if c != n), None)
    if wrong is not None:
        raise PperError(
            f"{samples_path} holds {wrong[1]} samples of task {wrong[0]}, not {n}: another evaluation wrote it; "
            "give another --out (or remove it)"
        )


def scored(row: dict[str, Any]) -> Scored:
    return Scored(row["task_id"], float(row["pass_rate"]), bool(row["passed"]))


def separation(choices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """From the per-task `choices` (rows of `<samples>.best_of_n.jsonl`): per criterion ("logprob", and "prm"
    where scored) the ROC AUC of its per-sample value for passing (None when all samples pass or all fail;
    samples without a value left out), with the counts of samples, passing samples and `mixed_tasks` (tasks with
    a passing and a failing sample)."""
    from ..prm.metrics import roc_auc

    auc: dict[str, float | None] = {}
    for criterion in [c for c in ("logprob", "prm") if choices and c in choices[0]]:
        pairs = [(v, int(p)) for c in choices for v, p in zip(c[criterion], c["passed"], strict=True) if v is not None]
        auc[criterion] = roc_auc([v for v, _ in pairs], [p for _, p in pairs]) if pairs else None
    passed = [p for c in choices for p in c["passed"]]
    return {
        "auc": auc,
        "samples": len(passed),
        "passing": sum(passed),
        "mixed_tasks": sum(0 < sum(c["passed"]) < len(c["passed"]) for c in choices),
    }


def differences(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """Paired per-task differences "A - B" from each criterion's per-task `values` ({criterion: {"strict_accuracy":
    [...], "pass_rate": [...]}}, tasks in the same order, "random" among them): [mean, low, high] (95% paired
    bootstrap over tasks) for each criterion but the oracle against "random", and "prm" against "logprob"."""
    from .stats import paired_bootstrap

    pairs = [(c, "random") for c in values if c not in ("oracle", "random")]
    pairs += [("prm", "logprob")] if "prm" in values else []
    return {
        f"{a} - {b}": {m: list(paired_bootstrap(values[a][m], values[b][m])) for m in ("strict_accuracy", "pass_rate")}
        for a, b in pairs
    }


def evaluate_best_of_n(
    tasks: Sequence[Task],
    samples_path: str | Path,
    executor: Any,
    sampler: Any,
    n: int,
    select: str = "logprob",
    prm: Any = None,
    max_length: int | None = None,
    metrics_path: str | Path | None = None,
    info: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Sample `n` programs per task with `sampler`, test them, and score the choices (see the module's
    docstring); `prm` (a `pper.prm.model.PRM`, needed for `select` "prm") scores lines of at most `max_length`
    tokens (None: the length it was trained with, else 2048); a warning names the tasks it was trained on, whose
    best-of-n is not held out. Returns (and writes to `metrics_path`) `evaluate`'s metrics of all samples with a
    `best_of_n` section: pass@1, pass@n, and per criterion (`chosen_by`) the metrics of the chosen programs."""
    if select not in SELECTS:
        raise PperError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    if select == "prm" and prm is None:
        raise PperError("best of n by the PRM needs a trained PRM: give --prm DIR (a `pper prm train` output)")
    if n < 2:
        raise PperError(f"best of n chooses among several samples per task: n must be 2 or more, got {n}")
    check_samples(samples_path, n)
    if select == "prm":
        trained = set(prm.info.get("train_tasks", [])) & {t.id for t in tasks}
        if trained:
            warnings.warn(
                f"{len(trained)} of the {len(tasks)} tasks (e.g. {min(trained)}) are among the tasks the PRM was "
                "trained on: its choices among their samples are not a held-out measure",
                stacklevel=2,
            )
        max_length = max_length or int(prm.info.get("max_length", 2048))
    seconds = earlier_seconds(metrics_path, Path(samples_path))
    base = evaluate(tasks, samples_path, executor, sampler, "sample", n, (1, n), None, info, show_progress)
    add_seconds(seconds, base["seconds"])
    start = time.perf_counter()
    groups = by_task(read_jsonl(results_path(samples_path)))
    ids = {t.id: t for t in tasks}
    criteria = ["logprob", "prm", "oracle"] if select == "prm" else ["logprob", "oracle"]
    chosen: dict[str, list[Scored]] = {c: [] for c in criteria}
    random: dict[str, list[float]] = {"strict_accuracy": [], "pass_rate": []}  # per task, a pick at random's mean
    choices = []
    for task_id, rows in groups.items():
        means = None
        if select == "prm":
            from ..prm.model import line_input

            task = ids[task_id]
            means = [mean_score(prm.scores(line_input(task, r["program"], prm.tokenizer, max_length))) for r in rows]
        picked = {c: choose(rows, c, means) for c in criteria}
        random["strict_accuracy"].append(sum(bool(r["passed"]) for r in rows) / len(rows))
        random["pass_rate"].append(sum(float(r["pass_rate"]) for r in rows) / len(rows))
        for c, i in picked.items():
            chosen[c].append(scored(rows[i]))
        choices.append({"task_id": task_id, "samples": len(rows), "logprob": logprobs(rows),
                        **({"prm": means} if means is not None else {}),
                        "passed": [bool(r["passed"]) for r in rows], "chosen": picked})  # fmt: skip
    out = choices_path(samples_path)
    write_atomic(out, "".join(json.dumps(c) + "\n" for c in choices))
    overall = base["overall"]
    result = {
        **base,
        "best_of_n": {
            "n": n,
            "select": select,
            "prm": (prm.info.get("id") if prm.info else None) if select == "prm" else None,
            "choices_file": str(out),
            "pass@1": overall["pass@1"],
            f"pass@{n}": overall[f"pass@{n}"],
            "pass_rate": overall["pass_rate"],
            "chosen_by": {c: summarize(chosen[c]) for c in criteria},
            "separation": separation(choices),
            "differences": differences(
                {
                    "random": random,
                    **{
                        c: {"strict_accuracy": [float(x.passed) for x in xs], "pass_rate": [x.pass_rate for x in xs]}
                        for c, xs in chosen.items()
                    },
                }
            ),  # fmt: skip
        },
    }
    add_seconds(seconds, {"selection": time.perf_counter() - start})
    result["seconds"] = seconds
    if metrics_path is not None:
        write_atomic(metrics_path, json.dumps(result, indent=2) + "\n")
    return result
