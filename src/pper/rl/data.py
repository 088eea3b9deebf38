"""pper's tasks as a `datasets.Dataset` for TRL's trainers: one row per task, its prompt as pper formats it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..generation.prompts import build_prompt
from ..tasks import Task


def rl_dataset(tasks: Sequence[Task], tokenizer: Any = None) -> Any:
    """Columns `prompt` (the text pper's sampler gives the model: a completion task's code prompt, an instruction
    task's message in the tokenizer's chat template, ready for generation) and `task_id` (what `ExecutionReward`
    reads). Prompts are plain text, so TRL generates after them as they are and passes them back to the reward."""
    import datasets

    rows = [{"prompt": build_prompt(t, tokenizer).text, "task_id": t.id} for t in tasks]
    return datasets.Dataset.from_list(rows, features=datasets.Features(
        {"prompt": datasets.Value("string"), "task_id": datasets.Value("string")}))  # fmt: skip
