"""Multi-turn GRPO rollouts (RLEF): each completion may take up to T turns of repair on public-test feedback.

A TRL `rollout_func` (`GRPOTrainer(rollout_func=...)`, experimental in TRL). For each prompt row (a chat prompt:
`rl_dataset(..., chat=True)`), the trainer's model writes an answer (TRL's own generation, `_generate_single_turn`);
its program (the answer's code) runs against the task's **public** tests; where one fails and turns are left, the
feedback (`prompts.feedback_text`, never a private test) is appended as the next user message in the tokenizer's
chat template, and the model answers again, after the whole conversation so far. The row's completion is the whole
exchange after the prompt: the model's answers (trained, `env_mask` 1) and the feedback messages between them (not
trained, `env_mask` 0, TRL's mask for environment tokens). The program of the last answer goes to the reward
functions as the column `pper_program` (and the number of turns taken as `pper_turns`); `ExecutionReward` judges that
program on the **private** tests, so the reward is the last turn's.

Sampling log-probabilities are not returned (`logprobs` None: TRL then treats the rollout as on-policy). Tasks need a
chat prompt for every turn, so completion-style tasks are posed as "complete this function" chats
(`prompts.task_message`), as in repair turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..generation.prompts import REPAIR_REQUEST, code_from_answer, public_feedback
from ..tasks import Task


def feedback_ids(tokenizer: Any, feedback: str, ended: bool) -> list[int]:
    """The tokens between an assistant answer and the next one in the tokenizer's chat template: the end of the
    answer's turn (unless the answer `ended` with the end-of-turn token already), the user's feedback message and
    the start of the assistant's next turn."""
    request = REPAIR_REQUEST.format(feedback=feedback)
    one = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    before = tokenizer.apply_chat_template(one, tokenize=False)
    after = tokenizer.apply_chat_template([*one, {"role": "user", "content": request}], tokenize=False,
                                          add_generation_prompt=True)  # fmt: skip
    tail = before[before.rindex("A") + 1 :]  # what closes the answer's turn: "<|im_end|>\n" in ChatML
    eos = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else ""
    if ended and eos and tail.startswith(eos):
        tail = tail[len(eos) :]
    return list(tokenizer(tail + after[len(before) :], add_special_tokens=False).input_ids)


def repair_rollout(tasks: Sequence[Task], turns: int, max_chars: int = 1000, executor: Any = None) -> Any:
    """A `rollout_func` for TRL's `GRPOTrainer` taking up to `turns` turns per completion (see the module docstring).
    The prompts of the dataset must be `rl_dataset(tasks, tokenizer, chat=True)`'s; `executor` runs the public tests
    (default: a pper `Executor` started at the first rollout)."""
    state: dict[str, Any] = {"executor": executor}

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from ..execution import Executor
        from .data import rl_dataset_prompts

        if state["executor"] is None:
            state["executor"] = Executor()
        tokenizer = trainer.processing_class
        if "prompts" not in state:
            state["prompts"] = rl_dataset_prompts(tasks, tokenizer)
        by_prompt = state["prompts"]
        unknown = [p for p in prompts if p not in by_prompt]
        if unknown:
            from ..errors import PperError

            raise PperError(
                "a multi-turn rollout's prompt is not a chat prompt of its tasks (rl_dataset(..., chat=True))"
            )
        rows = [by_prompt[p] for p in prompts]
        prompt_ids = [list(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        completion = [[] for _ in prompts]
        env_mask = [[] for _ in prompts]
        programs = [""] * len(prompts)
        taken = [0] * len(prompts)
        active = list(range(len(prompts)))
        eos = set(trainer.eos_token_ids) if hasattr(trainer, "eos_token_ids") else {tokenizer.eos_token_id}
        for turn in range(1, turns + 1):
            if turn > 1:
                feedback = _feedback(state["executor"], [rows[i] for i in active], [programs[i] for i in active],
                                     max_chars)  # fmt: skip
                still = []
                for i, text in zip(active, feedback, strict=True):
                    if text is None:
                        continue
                    ended = bool(completion[i]) and completion[i][-1] in eos
                    ids = feedback_ids(tokenizer, text, ended)
                    completion[i] += ids
                    env_mask[i] += [0] * len(ids)
                    still.append(i)
                active = still
                if not active:
                    break
            answers, _ = trainer._generate_single_turn([prompt_ids[i] + completion[i] for i in active], None, {}, 1)
            for i, ids in zip(active, answers, strict=True):
                completion[i] += list(ids)
                env_mask[i] += [1] * len(ids)
                programs[i] = code_from_answer(tokenizer.decode(ids, skip_special_tokens=True))
                taken[i] = turn
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": None, "env_mask": env_mask,
                "pper_program": programs, "pper_turns": taken}  # fmt: skip

    return rollout


def _feedback(executor: Any, tasks: list[Task], programs: list[str], max_chars: int) -> list[str | None]:
    """The feedback on each program from its task's public tests (None: passed them, or the task has none)."""
    out: list[str | None] = [None] * len(tasks)
    for i, _, text in public_feedback(executor, list(zip(tasks, programs, strict=True)), max_chars):
        out[i] = text
    return out
