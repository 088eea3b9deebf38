"""The BTP pipeline: sample -> test -> PPER fine-tune -> evaluate, in rounds, resumable.

Built so far: the run directory (resolved config, the task split, the replay buffer with the training
tasks), the sampling step and the testing step. Training and evaluation join as their packages land.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from .buffer import Execution, NewProgram, ReplayBuffer
from .config import PperConfig, validate_config
from .errors import PperError
from .tasks import Task, holdout_split, load_tasks

CONFIG_FILE = "config.yaml"
TASKS_FILE = "tasks.json"
PHASES_NOT_BUILT = ("PPER fine-tuning", "evaluation")
TEST_BATCH = 64  # executions committed together: a killed run loses at most one batch of test work


@dataclass
class Run:
    """A prepared run directory."""

    config: PperConfig
    dir: Path
    train: list[Task]
    eval: list[Task]


def split_tasks(config: PperConfig) -> tuple[list[Task], list[Task]]:
    """(training tasks, evaluation tasks) as the config asks."""
    c = config.tasks
    train = load_tasks(c.source, c.split, c.limit)
    if c.eval_source is not None:
        return train, load_tasks(c.eval_source, c.eval_split)
    return holdout_split(train, c.holdout, config.seed)


def prepare(config: PperConfig, force: bool = False) -> Run:
    """Create or reopen the run directory of `config`.

    A directory made by a different config is refused unless `force` (then the new config replaces it).
    """
    run_dir = config.run_dir
    config_path = run_dir / CONFIG_FILE
    if config_path.exists() and not force:
        stored = validate_config(yaml.safe_load(config_path.read_text()) or {}, str(config_path))
        if stored != config:
            changed = _changed_keys(stored.model_dump(mode="json"), config.model_dump(mode="json"))
            raise PperError(
                f"{run_dir} was made by another configuration (differs in: {', '.join(changed)}); "
                "use another run name, or --force to continue it with this configuration"
            )
    train, held_out = split_tasks(config)
    if not train:
        raise PperError(f"no training tasks: {config.tasks.source} with split {config.tasks.split!r} is empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(config_path, config.to_yaml())
    _write_atomic(run_dir / TASKS_FILE, json.dumps({"train": [t.id for t in train], "eval": [t.id for t in held_out]}))
    with ReplayBuffer.in_run(run_dir) as buffer:
        buffer.add_tasks(train)
    return Run(config=config, dir=run_dir, train=train, eval=held_out)


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(prefix + k)
    return keys


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def execute_untested(buffer: ReplayBuffer, executor, show_progress: bool = True) -> int:
    """Run every untested program of the buffer against its task's tests and store the executions.

    Commits in batches, so a killed run keeps what it tested and resumes with the rest. Returns how many
    programs were tested.
    """
    from .progress import progress

    untested = buffer.untested()
    tasks = {t.id: t for t in buffer.tasks()}
    results = executor.map((tasks[p.task_id], p.text) for p in untested)
    if show_progress:
        results = progress(results, len(untested), "testing", "programs")
    batch: list[Execution] = []
    for program, result in zip(untested, results, strict=True):
        batch.append(Execution(program.id, result.verdicts, result.passed, result.error, result.time))
        if len(batch) >= TEST_BATCH:
            buffer.add_executions(batch)
            batch = []
    buffer.add_executions(batch)
    return len(untested)


def sample_into_buffer(
    buffer: ReplayBuffer, sampler, tasks: list[Task], mode: str, k: int, round: int = 0, show_progress: bool = True
) -> int:
    """Sample candidates for every task `sampler` has not sampled in `round` yet and store them, one
    transaction per task, so a killed run resumes with the tasks it had not finished. Returns how many
    tasks were sampled now."""
    from .progress import progress

    buffer.add_tasks(tasks)
    done = buffer.sampled_tasks(sampler.name, round)
    todo = [t for t in tasks if t.id not in done]
    results = sampler.sample(todo, mode, k)
    if show_progress:
        results = progress(results, len(todo), f"sampling ({mode}, k={k})", "tasks")
    for task, candidates in results:
        programs = [NewProgram(task.id, c.program, c.logprob, c.num_tokens, c.model, round) for c in candidates]
        buffer.add_sampled(task.id, sampler.name, round, programs)
    return len(todo)


def run(config: PperConfig, force: bool = False, show_progress: bool = True) -> Run:
    """The phases built so far, resumable: prepare the run directory, sample the training tasks with the
    configured model, and test every untested program in the sandbox."""
    from .execution import Executor
    from .generation import transformers_sampler

    prepared = prepare(config, force=force)
    g, x = config.generation, config.execution
    sampler = transformers_sampler(g, config.seed)
    with ReplayBuffer.in_run(prepared.dir) as buffer:
        sample_into_buffer(buffer, sampler, prepared.train, g.mode, g.k, round=0, show_progress=show_progress)
        with Executor(limits=x.limits, workers=x.workers, isolation=x.isolation) as executor:
            execute_untested(buffer, executor, show_progress=show_progress)
    return prepared
