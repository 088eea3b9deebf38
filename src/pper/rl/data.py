"""pper's tasks as a `datasets.Dataset` for TRL's trainers: one row per task, its prompt as pper formats it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..generation.prompts import build_prompt, chat_prompt, task_message
from ..tasks import Task


def prompt_text(task: Task, tokenizer: Any = None, chat: bool = False) -> str:
    """The prompt pper gives the model for `task`: its sampling prompt (a completion task's code prompt, an
    instruction task's message in the chat template), or with `chat` a chat for every task style (completion tasks
    asked to "complete this function", as repair turns and multi-turn rollouts need)."""
    if chat:
        return chat_prompt(task, [{"role": "user", "content": task_message(task)}], tokenizer).text
    return build_prompt(task, tokenizer).text


def rl_dataset(tasks: Sequence[Task], tokenizer: Any = None, chat: bool = False) -> Any:
    """Columns `prompt` (`prompt_text`: ready for generation, in the tokenizer's chat template where it is a chat)
    and `task_id` (what `ExecutionReward` reads). Prompts are plain text, so TRL generates after them as they are
    and passes them back to the reward."""
    import datasets

    rows = [{"prompt": prompt_text(t, tokenizer, chat), "task_id": t.id} for t in tasks]
    return datasets.Dataset.from_list(rows, features=datasets.Features(
        {"prompt": datasets.Value("string"), "task_id": datasets.Value("string")}))  # fmt: skip


def rl_dataset_prompts(tasks: Sequence[Task], tokenizer: Any = None, chat: bool = True) -> dict[str, Task]:
    """Prompt text -> its task, for the prompts `rl_dataset` makes."""
    return {prompt_text(t, tokenizer, chat): t for t in tasks}
