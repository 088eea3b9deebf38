"""RLEF's repair turns (arXiv 2410.02089) in the buffer: a program that fails a public test gets up to T - 1 more turns.

After a round's programs are tested against their task's tests (the private ones, which judge), each program also
runs against the task's **public** tests (`Task.public_view`); where one fails, the feedback
(`prompts.feedback_text`: the failing public test and what went wrong, never a private test) is stored with the
public result (`ReplayBuffer.add_public_results`). Then, turn by turn, each such program is
answered with a repair turn: the model sees the conversation (`prompts.build_repair_prompt`: the task, its earlier
programs and their feedback) and writes a whole corrected program, `candidates` per turn (greedy by default), so a
task gets at most k x T programs with `candidates` = 1. Each program of a repair turn is stored with its place in
the trajectory (`ReplayBuffer.add_repairs`: root, turn, parent, feedback, the chat it answered) and is tested like
any other program, so it is a replay candidate with its own private pass rate.

Resumable at every step: public results and repairs are committed per batch and per parent, a parent with a
repair is never repaired again, and a killed run continues with the parents left and the programs untested.
Tasks without public tests never get a repair turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .buffer import NewProgram, Program, Repair, ReplayBuffer
from .generation.prompts import build_repair_prompt, public_feedback, training_target
from .tasks import Task

PUBLIC_BATCH = 64  # public results committed per batch


class FeedbackConfig(BaseModel):
    """turns: T, the turns a task's program may take (1: no repair, today's single turn). mode: how a repair
    turn decodes, "greedy" or "sample" (at the generation section's temperature and top_p). candidates: programs
    per repair turn (greedy: 1). max_chars: the most characters of feedback the model is shown. Repair turns are
    written by the run's sampler: the model being trained, or `generation.teacher` when a teacher writes the
    programs."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(1, ge=1)
    mode: Literal["greedy", "sample"] = "greedy"
    candidates: int = Field(1, ge=1)
    max_chars: int = Field(1000, ge=50)

    @model_validator(mode="after")
    def _one_greedy_program(self) -> FeedbackConfig:
        if self.mode == "greedy" and self.candidates > 1:
            raise ValueError(
                f"feedback.candidates is {self.candidates} but greedy decoding writes one program per turn: set "
                "feedback.mode: sample for several"
            )
        return self


def public_results(
    executor: Any, tasks: dict[str, Task], programs: Sequence[Program], max_chars: int
) -> Iterable[tuple[int, int, int, str | None]]:
    """(program id, public tests passed, public tests, feedback or None) for each program whose task has public
    tests, from running it against them (`prompts.public_feedback`)."""
    known = [p for p in programs if p.task_id in tasks]
    for i, result, feedback in public_feedback(executor, [(tasks[p.task_id], p.text) for p in known], max_chars):
        yield known[i].id, result.passed, result.total, feedback


def record_public_results(
    buffer: ReplayBuffer, executor: Any, tasks: dict[str, Task], round: int, config: FeedbackConfig
) -> int:
    """Run the public tests of every tested program of `round` that has no public result yet (the last turn's too,
    so every program's public result is kept); store them in batches. Returns how many were run."""
    pending = [p for p in buffer.without_public_results(round, config.turns + 1) if p.task_id in tasks]
    batch: list[tuple[int, int, int, str | None]] = []
    count = 0
    for row in public_results(executor, tasks, pending, config.max_chars):
        batch.append(row)
        count += 1
        if len(batch) >= PUBLIC_BATCH:
            buffer.add_public_results(batch)
            batch = []
    buffer.add_public_results(batch)
    return count


def history(buffer: ReplayBuffer, program: Program, feedback: str) -> list[tuple[str, str]]:
    """The (program, feedback) turns of `program`'s trajectory, from its first program to it."""
    turns = [(program.text, feedback)]
    turn = buffer.turn(program.id)
    while turn.parent_id is not None:
        parent = buffer.program(turn.parent_id)
        turns.append((parent.text, turn.feedback or ""))
        turn = buffer.turn(parent.id)
    return turns[::-1]


def repair_into_buffer(
    buffer: ReplayBuffer,
    sampler: Any,
    executor: Any,
    tasks: Sequence[Task],
    round: int,
    config: FeedbackConfig,
    test: Any,
    show_progress: bool = True,
) -> dict[int, int]:
    """Run the repair turns 2..T of `round` (see the module docstring); `test()` tests the buffer's untested
    programs (the pipeline's test phase, with its coverage setting). Returns turn -> programs written now."""
    from .progress import progress

    by_id = {t.id: t for t in tasks if t.public_tests}
    tokenizer = getattr(sampler, "tokenizer", None)
    written: dict[int, int] = {}
    for turn in range(1, config.turns):
        test()
        record_public_results(buffer, executor, by_id, round, config)
        parents = [(p, f) for p, f in buffer.to_repair(round, turn) if p.task_id in by_id]
        if not parents:
            continue
        prompts = [build_repair_prompt(by_id[p.task_id], history(buffer, p, f), tokenizer) for p, f in parents]
        results = sampler.sample_prompts(prompts, config.mode, config.candidates)
        if show_progress:
            results = progress(results, len(prompts), f"repair turn {turn + 1}", "programs")
        for i, candidates in results:
            parent, feedback = parents[i]
            repairs = [
                Repair(
                    NewProgram(parent.task_id, c.program, c.logprob, c.num_tokens, c.model, round),
                    parent.id,
                    feedback,
                    prompts[i].messages,
                    training_target(prompts[i], c.program),
                )
                for c in candidates[: config.candidates]
            ]
            if repairs:
                buffer.add_repairs(repairs)
                written[turn + 1] = written.get(turn + 1, 0) + len(repairs)
    test()
    record_public_results(buffer, executor, by_id, round, config)
    return written
