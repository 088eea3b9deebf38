"""The sampler protocol: tasks in, candidate programs with their sequence log-probability out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ..tasks import Task
from .prompts import Prompt

Mode = Literal["beam", "sample", "greedy"]
MODES = ("beam", "sample", "greedy")


@dataclass(frozen=True)
class Candidate:
    """One program for a task: the model's completion (`tokens`, decoded up to the stop string as `completion`;
    the last token may run past the stop, as when a tokenizer joins `)` and the newlines after it), the runnable
    program made from it, and `logprob`, the sum of the token log-probabilities given the prompt over the
    program's own `num_tokens` tokens among `tokens` (`prompts.program_tokens`: the code, without the
    prose and fences of a chat answer). `prefix`: the start of the program the model was given (a curriculum
    stage), part of `program` but not of `completion` or `logprob`."""

    task_id: str
    program: str
    completion: str
    logprob: float
    num_tokens: int
    model: str
    tokens: tuple[int, ...] = ()
    prefix: str = ""


class Sampler(Protocol):
    """Anything that turns tasks into candidates: a local model, a teacher behind an API."""

    name: str

    def sample(
        self,
        tasks: Sequence[Task],
        mode: Mode,
        k: int,
        prefixes: Mapping[str, str] | None = None,
        prefill_stops: bool = True,
    ) -> Iterator[tuple[Task, list[Candidate]]]:
        """For each task (in any order, each exactly once), its candidates: the top-k beams (`beam`),
        k samples (`sample`) or the greedy completion (`greedy`, k = 1). `prefixes`: task id -> the start of
        the program the model is given for that task, with `prefill_stops` (`prompts.build_prompt`)."""
        ...

    def sample_prompts(self, prompts: Sequence[Prompt], mode: Mode, k: int) -> Iterator[tuple[int, list[Candidate]]]:
        """Candidates for prompts already built (a repair turn's chat: `prompts.build_repair_prompt`): for each
        prompt (in any order, each exactly once), its index in `prompts` and its candidates."""
        ...
