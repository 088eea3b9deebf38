"""Export of the buffer: one row per program, as JSON Lines or a Hugging Face `datasets.Dataset`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..files import atomic_file
from .priority import Possibility, p2value, possibility
from .store import ReplayBuffer

EXPORT_COLUMNS = (
    "program_id",
    "task_id",
    "split",
    "prompt",
    "program",
    "prefix",
    "logprob",
    "num_tokens",
    "possibility",
    "model",
    "round",
    "tested",
    "pass_rate",
    "passed",
    "total",
    "verdicts",
    "error",
    "errors",
    "times",
    "duration",
    "executed_lines",
    "coverage_complete",
    "turn",
    "parent_id",
    "messages",
    "line_labels",
    "p2value",
)


def export_rows(buffer: ReplayBuffer, alpha: float = 0.5, mode: Possibility = "geometric") -> Iterator[dict[str, Any]]:
    """Every stored program with its task's prompt and split, its execution and its P2Value.

    Untested programs have None for the execution columns and for p2value. `passed` is the number of tests passed
    (of `total`; `pass_rate` = passed / total), `error` the first error text of a test that did not pass; `errors`
    and `times` hold every test's error text (or None) and wall time. `prefix` is the code the model was given
    to continue (empty when none): for an instruction task the start of `program`, for a completion task the
    text after the task's prompt (`program` starts with prompt + prefix). `executed_lines` are the sorted 1-based
    lines of `program` that ran in the tests, None where coverage was not collected; `coverage_complete` is
    False where tracing was cut short (so a line missing from `executed_lines` may have run: the FGO loss mask
    leaves such a program unmasked), None without coverage. `turn` is the
    program's turn in its repair trajectory (1: a first attempt); a program of a repair turn also has its
    `parent_id` and `messages`, the chat up to and including its answer (the program in a ```python block), in
    the conversational format TRL reads. `line_labels`: where the program was labelled (`pper prm label`), one
    label per line, 1 where its prefix up to that line can still be completed into a passing program; else None.
    """
    tasks = {t.id: t for t in buffer.tasks()}
    turns = buffer.turns()
    labels = buffer.line_labels()
    for p in buffer.programs():
        turn = turns.get(p.id)
        task = tasks[p.task_id]
        prob = float(possibility(p.logprob, p.num_tokens, mode))
        yield {
            "program_id": p.id,
            "task_id": p.task_id,
            "split": task.split,
            "prompt": task.prompt,
            "program": p.text,
            "prefix": p.prefix,
            "logprob": p.logprob,
            "num_tokens": p.num_tokens,
            "possibility": prob,
            "model": p.model,
            "round": p.round,
            "tested": p.tested,
            "pass_rate": p.pass_rate,
            "passed": p.passed,
            "total": p.total,
            "verdicts": list(p.verdicts) if p.verdicts is not None else None,
            "error": p.error,
            "errors": [t.error for t in p.result.tests] if p.result else None,
            "times": [t.time for t in p.result.tests] if p.result else None,
            "duration": p.duration,
            "executed_lines": _lines(p.result.executed_lines) if p.result else None,
            "coverage_complete": p.result.coverage_complete if _covered(p.result) else None,
            "turn": p.turn,
            "parent_id": turn.parent_id if turn else None,
            "messages": [*turn.messages, {"role": "assistant", "content": turn.answer}] if turn else None,
            "line_labels": labels.get(p.id),
            "p2value": float(p2value(prob, p.pass_rate, alpha)) if p.tested else None,
        }


def to_jsonl(buffer: ReplayBuffer, path: str | Path, alpha: float = 0.5, mode: Possibility = "geometric") -> int:
    """Write `export_rows` to a JSONL file (atomically: a temporary file renamed); returns the row count."""
    n = 0
    with atomic_file(path) as f:
        for row in export_rows(buffer, alpha, mode):
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def to_hf_dataset(buffer: ReplayBuffer, alpha: float = 0.5, mode: Possibility = "geometric"):
    """The buffer as a `datasets.Dataset` with the columns of `EXPORT_COLUMNS`."""
    import datasets

    features = datasets.Features(
        {
            "program_id": datasets.Value("int64"),
            "task_id": datasets.Value("string"),
            "split": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "program": datasets.Value("string"),
            "prefix": datasets.Value("string"),
            "logprob": datasets.Value("float64"),
            "num_tokens": datasets.Value("int64"),
            "possibility": datasets.Value("float64"),
            "model": datasets.Value("string"),
            "round": datasets.Value("int64"),
            "tested": datasets.Value("bool"),
            "pass_rate": datasets.Value("float64"),
            "passed": datasets.Value("int64"),
            "total": datasets.Value("int64"),
            "verdicts": datasets.Sequence(datasets.Value("string")),
            "error": datasets.Value("string"),
            "errors": datasets.Sequence(datasets.Value("string")),
            "times": datasets.Sequence(datasets.Value("float64")),
            "duration": datasets.Value("float64"),
            "executed_lines": datasets.Sequence(datasets.Value("int64")),
            "coverage_complete": datasets.Value("bool"),
            "turn": datasets.Value("int64"),
            "parent_id": datasets.Value("int64"),
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],  # a list of dicts
            "line_labels": datasets.Sequence(datasets.Value("int64")),
            "p2value": datasets.Value("float64"),
        }
    )
    return datasets.Dataset.from_list(list(export_rows(buffer, alpha, mode)), features=features)


def _covered(result: Any) -> bool:
    return result is not None and result.executed_lines is not None


def _lines(lines: tuple[int, ...] | None) -> list[int] | None:
    return None if lines is None else list(lines)
