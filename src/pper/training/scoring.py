"""P(t) of stored programs under the model being trained, and the replay of a round built from it.

A program's possibility is scored in exactly the example it is trained on (`build_example`: the sampling
prompt, or the repair turn's conversation, cut to `max_length` as training cuts it), over exactly the program's
own tokens (`pper.generation.prompts.program_tokens`: for instruction tasks and repair turns the code, without the
```python fences, the prose and the end-of-text token; for completion tasks every token of the completion before
end of text).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..buffer import ReplayBuffer, ReplayTable
from ..buffer.replay import Replay, replay_table
from ..generation.prompts import program_tokens, prompt_for
from ..tasks import Task
from .examples import Example, build_example, pack

if TYPE_CHECKING:
    from ..config import PperConfig

TOKENS_PER_PASS = 2048  # examples packed into one no-grad forward pass, up to this many tokens (at least one)


def program_positions(
    task: Task, example: Example, tokenizer: Any, prefix: str = "", messages: Sequence[dict[str, str]] = ()
) -> tuple[int, int]:
    """The positions [lo, hi) of `example.ids` that hold the program's own tokens (`program_tokens` over
    the example's target; with a `prefix` the model was given, what it wrote after it; with a repair turn's
    `messages`, the code of its answer); position 0 is never one (nothing predicts it)."""
    prompt = prompt_for(task, tokenizer, prefix, messages)
    lo, hi = program_tokens(tokenizer, prompt, example.ids[example.target_start :])
    lo, hi = example.target_start + lo, example.target_start + hi
    return max(lo, 1), max(hi, 1)


def program_logprobs(
    model: Any,
    tokenizer: Any,
    programs: Sequence[tuple],
    max_length: int,
    dtype: Any = None,
    tokens_per_pass: int = TOKENS_PER_PASS,
) -> tuple[np.ndarray, np.ndarray]:
    """(log-probability, token count) of each (task, program[, prefix[, messages]]) under `model`: log P(t)
    = sum over the program's own positions j of log p(ids[j] | ids[:j]) in its training example (given its
    prefix, if any; in its repair turn's conversation, if any), and the number of those positions.

    No-grad forward passes over examples packed into unpadded rows of up to `tokens_per_pass` tokens (shortest
    first), logits only at the positions that predict program tokens; `dtype` is an autocast dtype (None:
    the model's own). The model is put in eval mode for the passes and back in its mode after.
    """
    import torch

    items = [(p[0], p[1], p[2] if len(p) > 2 else "", p[3] if len(p) > 3 else ()) for p in programs]
    examples = [build_example(t, text, tokenizer, max_length, prefix=pre, messages=m) for t, text, pre, m in items]
    spans = [program_positions(t, ex, tokenizer, pre, m) for (t, _, pre, m), ex in zip(items, examples, strict=True)]
    logprob, count = np.zeros(len(examples)), np.array([hi - lo for lo, hi in spans], dtype=np.int64)
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        for batch in _batches([len(ex.ids) for ex in examples], tokens_per_pass):
            ids, positions, _ = pack([examples[i] for i in batch])
            keep, owner, offset = [], [], 0
            for i in batch:
                lo, hi = spans[i]
                keep.extend(range(offset + lo - 1, offset + hi - 1))
                owner.extend([i] * (hi - lo))
                offset += len(examples[i].ids)
            if not keep:
                continue
            input_ids = torch.tensor([ids], device=device)
            kept = torch.tensor(keep, device=device)
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                out = model(
                    input_ids=input_ids,
                    position_ids=torch.tensor([positions], device=device),
                    logits_to_keep=kept,
                    use_cache=False,
                )
            token_logp = torch.log_softmax(out.logits[0].float(), -1).gather(-1, input_ids[0, kept + 1, None])[:, 0]
            np.add.at(logprob, np.array(owner), token_logp.double().cpu().numpy())
    finally:
        model.train(training)
    return np.minimum(logprob, 0.0), count


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped shortest first into runs of at most `budget` tokens (a longer example alone)."""
    batches: list[list[int]] = []
    size = budget + 1
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if size + lengths[i] > budget:
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += lengths[i]
    return batches


def rescore(
    model: Any, tokenizer: Any, buffer: ReplayBuffer, table: ReplayTable, max_length: int, dtype: Any = None
) -> ReplayTable:
    """`table` with every program's log-probability and token count recomputed under `model`
    (`program_logprobs`); the order of the rows and the other columns are kept. A program none of whose
    tokens fits in its example (cut at `max_length` before its code) keeps its stored figures."""
    tasks = {t.id: t for t in buffer.tasks()}
    texts = {p.id: (p.text, p.prefix, p.messages) for p in buffer.programs()}
    programs = [(tasks[str(tid)], *texts[int(pid)]) for pid, tid in zip(table.program_id, table.task_id, strict=True)]
    logprob, count = program_logprobs(model, tokenizer, programs, max_length, dtype)
    scored = count > 0
    return dataclasses.replace(
        table,
        logprob=np.where(scored, logprob, table.logprob),
        num_tokens=np.where(scored, count, table.num_tokens),
    )


def replay_for_round(buffer: ReplayBuffer, config: PperConfig, model: Any, tokenizer: Any, seed: int) -> Replay:
    """The replay of a training round: the buffer's tested programs (at or above `replay.min_pass_rate`)
    with their stored P(t), or, with `replay.rescore`, with P(t) recomputed under `model` (the weights the
    round starts from) in the training examples, in the training precision."""
    from .trainer import autocast_dtype

    table = replay_table(buffer, config.replay)
    if config.replay.rescore and len(table):
        dtype = autocast_dtype(config.training.precision, next(model.parameters()).device.type)
        table = rescore(model, tokenizer, buffer, table, config.training.max_length, dtype)
    return Replay(table, config.replay, seed)
