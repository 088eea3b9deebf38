"""Training examples: prompt + program as token ids, with the loss on the program tokens only.

The prompt is built exactly as at sampling time (`build_prompt` with the model's tokenizer) and the
target is the text the model must write after it to produce the program, ended by the end-of-text token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..generation.prompts import build_prompt, training_target
from ..tasks import Task


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + target; positions from `target_start` on are trained."""

    ids: tuple[int, ...]
    target_start: int

    @property
    def target_tokens(self) -> int:
        return len(self.ids) - self.target_start

    @property
    def first_predicted(self) -> int:
        """The first target position the loss covers: the first token has no context to be predicted from."""
        return max(self.target_start, 1)


def build_example(task: Task, program: str, tokenizer: Any, max_length: int) -> Example:
    """The example for (task, program), cut to `max_length` tokens: the target's end is cut first, and a
    prompt too long to leave room for half of `max_length` is cut from its start."""
    prompt = build_prompt(task, tokenizer)
    prompt_ids = list(tokenizer(prompt.text).input_ids)
    target_ids = list(tokenizer(training_target(prompt, program), add_special_tokens=False).input_ids)
    target_ids.append(tokenizer.eos_token_id)
    room = max(max_length // 2, max_length - len(target_ids))
    prompt_ids = prompt_ids[-room:]
    ids = (prompt_ids + target_ids)[:max_length]
    return Example(tuple(ids), len(prompt_ids))


def pack(examples: list[Example]) -> tuple[list[int], list[int], list[int]]:
    """One row for a micro-batch, without padding: (input ids, position ids restarting at 0 for each
    example, so attention stays within it, and the positions whose next token is a target token)."""
    ids: list[int] = []
    positions: list[int] = []
    predict: list[int] = []
    for ex in examples:
        offset = len(ids)
        ids.extend(ex.ids)
        positions.extend(range(len(ex.ids)))
        predict.extend(range(offset + ex.first_predicted - 1, offset + len(ex.ids) - 1))
    return ids, positions, predict
