"""pper's sandbox as a reward function with TRL's contract (`GRPOTrainer(reward_funcs=...)`).

    reward(prompts=[...], completions=[...], task_id=[...], **other_columns) -> list[float]

one float per completion. The column `task_id` names each completion's task among the reward's tasks (any pper
task source). The program run for a completion is what pper itself would run:

* a completion-style task (HumanEval) whose text prompt is its code (it starts with the task's prompt: the prompt
  `pper.rl.rl_dataset` formats, or the raw HumanEval prompt): exactly the `prompts` value passed + the completion,
  cut where pper's sampler stops a completion (a new top-level statement: `prompts.COMPLETION_STOPS`; TRL generates
  until end of text);
* an instruction task, a completion-style task asked in a chat (`rl_dataset(..., chat=True)`, or any prompt that
  does not start with the task's code), or any conversational completion (a list of messages): the code of the
  (last assistant) answer, extracted as pper extracts it from a chat answer (`prompts.code_from_answer`).

Programs run in pper's sandbox against the task's private tests (`Task.tests`), all of a call's completions in
parallel on one pool of sandboxed workers started at the first call and kept until `close()` or the end of the
process. Reward kinds (`kind`):

* `pass_rate` (default): passed / total tests;
* `strict`: 1.0 when every test passes, else 0.0;
* `coderl`: partial credit by how far a program got, CodeRL's scale (Le et al. 2022): 1.0 if every test passes,
  -0.3 if it ran and only gave wrong answers, -0.6 if it raised, timed out or hit a limit in some test, -1.0 if it
  does not compile.

A bad program (syntax error, crash, timeout, memory bomb) gets its reward, never an exception; a `task_id` the
reward does not know raises a `PperError` naming it. A multi-turn rollout (`pper.rl.multiturn`) passes the program
of its last turn as the column `pper_program`, which is then judged instead (a dataset column of any other name,
`program` included, is ignored). With `run_dir`, every scored program and
its verdicts are also stored in that directory's pper buffer (`buffer.sqlite`, model `rl:<name>`), as one more
source of programs to inspect or export. A reward function sees no log-probabilities: such programs are stored
with log P = 0 and one token per completion token; they are records, not replay candidates.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import PperError
from ..execution.results import PASSED, SYNTAX_ERROR, WRONG_ANSWER, ProgramResult
from ..generation.prompts import COMPLETION_STOPS, code_from_answer, code_span, stop_index
from ..tasks import Task, load_tasks
from .config import REWARD_KINDS, RewardKind


def reward_of(result: ProgramResult, kind: RewardKind = "pass_rate") -> float:
    """The reward of one program's results (see the module docstring for the kinds)."""
    if kind == "pass_rate":
        return result.pass_rate
    if kind == "strict":
        return 1.0 if result.all_passed else 0.0
    if kind == "coderl":
        verdicts = set(result.verdicts)
        if result.all_passed:
            return 1.0
        if SYNTAX_ERROR in verdicts:
            return -1.0
        if verdicts <= {PASSED, WRONG_ANSWER}:
            return -0.3
        return -0.6
    raise ValueError(_unknown_kind(kind))


def _unknown_kind(kind: Any) -> str:
    return f"unknown reward kind {kind!r} (kinds: {', '.join(REWARD_KINDS)})"


def program_for(task: Task, prompt: Any, completion: Any) -> str:
    """The program pper runs for one (prompt, completion) pair (see the module docstring)."""
    if isinstance(completion, list):  # conversational: the last assistant message
        answers = [m.get("content", "") for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
        return code_from_answer(answers[-1] if answers else "")
    if not isinstance(completion, str):
        raise PperError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
    return text_program(task, prompt, completion)[0]


def text_program(task: Task, prompt: Any, completion: str) -> tuple[str, tuple[int, int], int]:
    """(the program run for a text `completion`, the span of the completion that is the program's code, offset:
    completion character i is program character i + offset). A continued code prompt (see the module docstring):
    the prompt + the completion up to pper's stop; otherwise the code of the answer (`code_span`)."""
    if task.prompt_style == "completion" and isinstance(prompt, str) and prompt.startswith(task.prompt.rstrip()):
        stop = stop_index(completion, COMPLETION_STOPS)  # where pper's sampler would have stopped it
        end = len(completion) if stop is None else stop
        return prompt + completion[:end], (0, end), len(prompt)
    start, end = code_span(completion)
    return completion[start:end] + "\n", (start, end), -start


class ExecutionReward:
    """A TRL reward function that runs completions in pper's sandbox (see the module docstring).

    `tasks`: a task source spec (as `pper tasks` takes, e.g. "humaneval" or "mbpp:PATH") or a list of `Task`s,
    loaded at the first call. `workers`: sandboxed workers (default one per core); `execution`: an
    `ExecutionConfig` for limits and isolation. Use `close()` (or `with`) to stop the workers early.
    """

    def __init__(
        self,
        tasks: str | Sequence[Task],
        kind: RewardKind = "pass_rate",
        run_dir: str | Path | None = None,
        workers: int | None = None,
        execution: Any = None,
        split: str | None = None,
    ):
        if kind not in REWARD_KINDS:
            raise PperError(_unknown_kind(kind))
        self.kind = kind
        self.__name__ = f"pper_{kind}"  # TRL logs each reward function under its __name__
        self._source, self._split = tasks, split
        self._tasks: dict[str, Task] | None = None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._workers, self._execution = workers, execution
        self._executor: Any = None
        self._lock = threading.Lock()
        self.calls = self.scored = 0

    @property
    def tasks(self) -> dict[str, Task]:
        """Task id -> task, loaded once."""
        if self._tasks is None:
            source = self._source
            loaded = load_tasks(source, self._split) if isinstance(source, str) else list(source)
            self._tasks = {t.id: t for t in loaded}
        return self._tasks

    def executor(self) -> Any:
        """The pool of sandboxed workers, started once."""
        with self._lock:
            if self._executor is None:
                from ..execution import ExecutionConfig, open_executor

                config = self._execution or ExecutionConfig()
                if self._workers is not None:
                    config = config.model_copy(update={"workers": self._workers})
                self._executor = open_executor(config)
                atexit.register(self.close)
            return self._executor

    def close(self) -> None:
        """Stop the sandboxed workers (a later call starts them again)."""
        with self._lock:
            if self._executor is not None:
                self._executor.close()
                self._executor = None

    def __enter__(self) -> ExecutionReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def results(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        task_ids: Sequence[str],
        programs: Sequence[str] | None = None,
    ) -> list[tuple[Task, str, ProgramResult]]:
        """(task, program, its results) of each completion; `programs` (a multi-turn rollout's `pper_program` column:
        the last turn's program) replace the programs made from the completions."""
        if not (len(prompts) == len(completions) == len(task_ids)):
            raise PperError(
                f"{len(prompts)} prompts, {len(completions)} completions and {len(task_ids)} task ids: one of each "
                "per completion"
            )
        tasks = self.tasks
        unknown = sorted({t for t in task_ids if t not in tasks}, key=repr)
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            source = self._source if isinstance(self._source, str) else "a list of tasks"
            known = next(iter(tasks), None)
            raise PperError(
                f"unknown task_id {unknown[0]!r}{more}: not among the reward's {len(tasks)} tasks ({source}"
                + (f"; their ids are strings like {known!r})" if known is not None else ")")
            )
        if programs is not None:
            jobs = [(tasks[t], str(p)) for p, t in zip(programs, task_ids, strict=True)]
        else:
            jobs = [
                (tasks[t], program_for(tasks[t], p, c)) for p, c, t in zip(prompts, completions, task_ids, strict=True)
            ]
        results = list(self.executor().map(jobs))
        return [(task, program, result) for (task, program), result in zip(jobs, results, strict=True)]

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        task_id: Sequence[str] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        pper_program: Sequence[str] | None = None,
        **columns: Any,
    ) -> list[float]:
        if completions is None:
            raise PperError("the reward needs `completions` (TRL passes them as a keyword)")
        if task_id is None:
            raise PperError(
                "the reward needs a `task_id` column in the dataset, naming each prompt's task (pper.rl.dataset "
                "makes one)"
            )
        prompts = list(prompts) if prompts is not None else [""] * len(completions)
        scored = self.results(prompts, list(completions), list(task_id), pper_program)
        self.calls += 1
        self.scored += len(scored)
        if self.run_dir is not None:
            self._store(scored, completion_ids)
        return [reward_of(result, self.kind) for _, _, result in scored]

    def _store(self, scored: list[tuple[Task, str, ProgramResult]], completion_ids: Any) -> None:
        from ..buffer import Execution, NewProgram, ReplayBuffer

        with ReplayBuffer.in_run(self.run_dir) as buffer:
            buffer.add_tasks(task for task, _, _ in scored)
            lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [1] * len(scored)
            ids = buffer.add_programs(
                NewProgram(task.id, program, 0.0, max(n, 1), f"rl:{self.__name__}", self.calls)
                for (task, program, _), n in zip(scored, lengths, strict=True)
            )
            buffer.add_executions(Execution(i, result) for i, (_, _, result) in zip(ids, scored, strict=True))


_default: ExecutionReward | None = None


def __getattr__(name: str) -> Any:
    """`execution_reward`: a ready `ExecutionReward` over the bundled HumanEval (pass rate), made at first use."""
    global _default
    if name == "execution_reward":
        if _default is None:
            _default = ExecutionReward("humaneval")
            _default.__name__ = "execution_reward"
        return _default
    raise AttributeError(name)
