"""A process reward model as a dense reward for GRPO (`rl.prm_weight`), as PSGPO (arXiv 2410.17621) uses its PRM in
PPO: the outcome advantage stays, and each program line's tokens get the PRM's opinion of the line on top of it.

For one group of G completions of a prompt with outcome rewards R_1..R_G, TRL's GRPO advantage A_i (R_i normalised
within the group, `scale_rewards`) is kept. The PRM (`pper.prm.model`) scores each line l of completion i's program
(the program the reward ran, `program_for`): s_il = `PRM.scores(line_input(task, program))`, for its scored lines
(not a completion task's given prompt lines, not lines cut off by `prm.max_length`). Over all scored lines of the
group's completions, with mean m and sample standard deviation sd (n - 1, as TRL's `nanstd`):

    D_il = (s_il - m) / (sd + eps),   eps = 1e-4;   D = 0 when the group has fewer than 2 scored lines, or sd = 0;

    A_it = A_i + w * D_il(t)   for a completion token t in program line l(t) (a scored line),
    A_it = A_i                 for the other tokens (prose and fences of a chat answer, a completion task's prompt
                               line, what follows the program, the end-of-text token, padding).

A token belongs to the program line its last character is on, as FGO's mask decides it (`training.examples.
token_lines`): a token spanning a line break counts for the line it ends in. Token ends come from the decoded
completion (its own tokens, up to the first special token). The advantages become a (B, T) tensor, which TRL's
loss takes as it is (`GRPOTrainer._compute_loss` broadcasts a 1-D one per token). w = 0 is plain GRPO: no PRM is
loaded and TRL's trainer runs unchanged.

`trainer_class(base)` adds this to a `GRPOTrainer` class: TRL's, or `pper.rl.replay`'s, whose replayed groups (their
stored completions and recomputed A_i, in the batch rows its `batch_rows` names) get the dense term too. The metric
`prm/dense` logs, per step, the mean |w * D_il| over the batch's scored lines. Limits: one process (a group's rows
must all be local), single-turn completions (a multi-turn rollout's tokens are not one program).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PperError
from ..tasks import Task
from ..training.examples import token_ends, token_lines
from .reward import text_program

EPS = 1e-4


def line_advantages(scores: Sequence[Mapping[int, float]], eps: float = EPS) -> list[dict[int, float]]:
    """D for one group: `scores[i]` maps completion i's scored lines (1-based) to the PRM's scores; returns the same
    lines mapped to (s - mean) / (sd + eps) over all of the group's scored lines (0 with fewer than 2, or sd 0)."""
    values = [s for lines in scores for s in lines.values()]
    n = len(values)
    mean = sum(values) / n if n else 0.0
    sd = math.sqrt(sum((s - mean) ** 2 for s in values) / (n - 1)) if n >= 2 else 0.0
    if sd == 0.0:
        return [dict.fromkeys(lines, 0.0) for lines in scores]
    return [{line: (s - mean) / (sd + eps) for line, s in lines.items()} for lines in scores]


def completion_lines(task: Task, prompt: Any, completion: str, ends: Sequence[int]) -> tuple[str, list[int | None]]:
    """(the program the reward runs for `completion`, the 1-based program line of each of its tokens or None):
    `ends[j]` is where token j ends in `completion`. A continued code prompt's program is the prompt plus the
    completion up to pper's stop; any other's is the code of the answer (`code_span`), its prose and fences on no
    line (`reward.text_program`)."""
    program, span, offset = text_program(task, prompt, completion)
    return program, token_lines(ends, span, offset, program)


def token_advantages(
    advantage: float, lines: Sequence[int | None], dense: Mapping[int, float], weight: float
) -> list[float]:
    """A_it for a completion's tokens: `advantage` (A_i) plus `weight` x D of the scored line a token is on."""
    return [advantage + weight * dense[line] if line in dense else advantage for line in lines]


def completion_ends(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[int]]:
    """(the text of a completion's token `ids` up to their first special token, where each of those tokens ends in
    it)."""
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    kept = list(ids)
    kept = kept[: next((j for j, t in enumerate(kept) if t in special), len(kept))]
    text = tokenizer.decode(kept)
    return text, token_ends(tokenizer, text, kept)


@functools.cache
def trainer_class(base: type) -> type:
    """`base` (a `GRPOTrainer` class) with the PRM's dense term in its advantages (see the module docstring)."""
    import torch

    from ..prm.model import line_input

    class DenseRewardTrainer(base):  # type: ignore[misc, valid-type]
        """`GRPOTrainer` whose advantages are per token: A_i + w * D_il(t) (`pper.rl.dense`)."""

        def __init__(
            self, *args: Any, prm: Any, prm_weight: float, tasks: Mapping[str, Task], max_length: int = 2048,
            **kwargs: Any,
        ):  # fmt: skip
            """`prm`: a `pper.prm.model.PRM` (None only with `prm_weight` 0); `tasks`: task id -> task, for the
            dataset's `task_id` column; `max_length`: the PRM's input length (`prm.max_length`)."""
            super().__init__(*args, **kwargs)
            if prm_weight > 0 and prm is None:
                raise PperError("rl.prm_weight > 0 needs a PRM")
            if self.accelerator.num_processes > 1:
                raise PperError("rl.prm_weight runs in one process: a group's completions must all be local")
            self.prm, self.prm_weight, self.prm_tasks, self.prm_max_length = prm, prm_weight, tasks, max_length

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            out = super()._generate_and_score_completions(inputs)
            if self.prm_weight == 0:
                return out
            rows = getattr(self, "batch_rows", None) or [(x.get("task_id"), x["prompt"]) for x in inputs]
            out["advantages"], magnitude = self.dense_advantages(out, rows)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["prm/dense"].append(magnitude)
            return out

        def dense_advantages(self, out: dict[str, Any], rows: Sequence[tuple[str, Any]]) -> tuple[Any, float]:
            """(the (B, T) advantages of the batch `out`, whose row i is a completion of task and prompt `rows[i]`,
            groups of `num_generations` rows in a row; the mean |w * D| over its scored lines)."""
            ids, mask, advantages = out["completion_ids"], out["completion_mask"], out["advantages"]
            if len(rows) != ids.size(0):
                raise PperError(f"{len(rows)} tasks for a batch of {ids.size(0)} completions")
            lines, scores = [], []
            for i, (task_id, prompt) in enumerate(rows):
                task = self.prm_tasks.get(task_id)
                if task is None:
                    raise PperError(f"rl.prm_weight: no task {task_id!r} among the training tasks")
                n = int(mask[i].sum().item())
                text, ends = completion_ends(self.processing_class, ids[i][:n].tolist())
                program, token_line = completion_lines(task, prompt, text, ends)
                lines.append(token_line)
                scores.append(self.prm.scores(line_input(task, program, self.prm.tokenizer, self.prm_max_length)))
            g = self.num_generations
            dense = [d for start in range(0, len(rows), g) for d in line_advantages(scores[start : start + g])]
            width = ids.size(1)
            table = []
            for a, token_line, d in zip(advantages.tolist(), lines, dense, strict=True):
                row = token_advantages(a, token_line, d, self.prm_weight)
                table.append(row + [a] * (width - len(row)))
            terms = [abs(self.prm_weight * v) for d in dense for v in d.values()]
            per_token = torch.tensor(table, dtype=advantages.dtype, device=advantages.device)
            return per_token, sum(terms) / len(terms) if terms else 0.0

    return DenseRewardTrainer
