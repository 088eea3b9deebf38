"""Training examples: prompt + program as token ids, with the loss on the program tokens only.

The prompt is built exactly as at sampling time (`build_prompt` with the model's tokenizer, or a repair turn's
conversation) and the target is the text the model must write after it to produce the program, ended by the
end-of-text token.

FGO (StepCoder's fine-grained optimization, `training.loss_mask: executed`): given the lines of the program
that ran in its tests (`ProgramResult.executed_lines`), a target token of the program's code gets weight 0
when the line it ends in never ran, else 1; tokens outside the code (the ``` fences of a chat answer, the
end-of-text token) keep weight 1. The loss of a minibatch is then sum_j w_j * CE_j / sum_j w_j over its target
tokens j, which is the plain loss when every line ran.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..generation.prompts import program_span, prompt_for, prompt_ids, target_program_offset, training_target
from ..source import line_starts
from ..tasks import Task


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + target; positions from `target_start` on are trained, token i with the loss
    weight `weights[i - target_start]` (None: 1 each; see the module docstring)."""

    ids: tuple[int, ...]
    target_start: int
    weights: tuple[float, ...] | None = None

    @property
    def target_tokens(self) -> int:
        return len(self.ids) - self.target_start

    @property
    def trained_tokens(self) -> float:
        """The summed loss weight of the predicted target tokens (their count without weights)."""
        if self.weights is None:
            return len(self.ids) - self.first_predicted
        return float(sum(self.weights[self.first_predicted - self.target_start :]))

    def token_weights(self) -> list[float]:
        """The loss weight of each predicted target token, from `first_predicted` on."""
        if self.weights is None:
            return [1.0] * (len(self.ids) - self.first_predicted)
        return list(self.weights[self.first_predicted - self.target_start :])

    @property
    def first_predicted(self) -> int:
        """The first target position the loss covers: the first token has no context to be predicted from."""
        return max(self.target_start, 1)


def build_example(
    task: Task,
    program: str,
    tokenizer: Any,
    max_length: int,
    executed_lines: Sequence[int] | None = None,
    prefix: str = "",
    messages: Sequence[dict[str, str]] = (),
) -> Example:
    """The example for (task, program), cut to `max_length` tokens: the target's end is cut first, and a
    prompt too long to leave room for half of `max_length` is cut from its start. With `executed_lines`
    (FGO), the tokens of code lines not among them get loss weight 0. With the `prefix` the model was given
    (a curriculum stage), the prompt ends with it and the target is what the model wrote after it. With the
    `messages` of a repair turn, the prompt is that conversation and the target the program in a ```python block
    (`prompts.prompt_for`)."""
    prompt = prompt_for(task, tokenizer, prefix, messages)
    context = prompt_ids(tokenizer, prompt)
    target = training_target(prompt, program)
    target_ids = list(tokenizer(target, add_special_tokens=False).input_ids)
    weights = None
    if executed_lines is not None:
        ends = token_ends(tokenizer, target, target_ids)
        weights = executed_weights(
            target, ends, program_span(prompt, target), target_program_offset(prompt, program), program, executed_lines
        )
        weights.append(1.0)  # the end-of-text token
    target_ids.append(tokenizer.eos_token_id)
    room = max(max_length // 2, max_length - len(target_ids))
    context = context[-room:]
    ids = (context + target_ids)[:max_length]
    if weights is not None:
        weights = weights[: len(ids) - len(context)]
    return Example(tuple(ids), len(context), None if weights is None else tuple(weights))


def token_ends(tokenizer: Any, text: str, ids: Sequence[int]) -> list[int]:
    """Where each token of `ids` (whose decoding is `text`) ends in `text`: from the tokenizer's offset mapping
    where it has one (fast tokenizers) and `ids` are the text's own tokenization, else by decoding prefixes (as
    for sampled tokens, which need not be the tokenizer's own split of their text)."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        encoded = None
    if encoded is not None and list(encoded.input_ids) == list(ids):  # `ids` are the text's own tokenization
        return [end for _, end in encoded.offset_mapping]
    return [len(tokenizer.decode(list(ids[: j + 1]))) for j in range(len(ids))]


def executed_weights(
    target: str,
    ends: Sequence[int],
    span: tuple[int, int],
    offset: int,
    program: str,
    executed_lines: Sequence[int],
) -> list[float]:
    """The FGO loss weight of each target token: 0 for a token that ends inside the program's code (`span`
    of `target`) on a program line not in `executed_lines`, else 1. Target character i is program character
    i + `offset`; a token counts for the line its last character is on (`token_lines`)."""
    ran = set(executed_lines)
    return [0.0 if line is not None and line not in ran else 1.0 for line in token_lines(ends, span, offset, program)]


def token_lines(ends: Sequence[int], span: tuple[int, int], offset: int, program: str) -> list[int | None]:
    """The 1-based program line of each token of a text (`ends[j]`: where token j ends in it): the line its last
    character is on, for a token that ends inside the program's code (`span` of the text, text character i being
    program character i + `offset`); None for the others (prose, fences, end of text, past the program)."""
    starts = line_starts(program)
    lines: list[int | None] = []
    for end in ends:
        last = end - 1
        inside = span[0] <= last < span[1] and 0 <= last + offset < len(program)
        lines.append(bisect.bisect_right(starts, last + offset) if inside else None)
    return lines


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
