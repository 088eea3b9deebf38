"""The BTP pipeline: sample -> test -> PPER fine-tune -> evaluate, in rounds, resumable.

Every step persists what it did in the run directory before the next one starts, and every step skips
what is already there, so a killed run resumes where it stopped:

* sampling: one buffer transaction per task (tasks sampled in this round are skipped);
* testing: executions committed in batches (untested programs are the rest);
* training: a checkpoint every `training.checkpoint_every` steps and at the end of the round;
* evaluation: samples and results appended per task and per program, metrics written at the end.

Round 0 is the model before training (evaluated when `evaluation.before`); round r samples with the
model of round r - 1, trains round r's checkpoint on the whole buffer, and evaluates it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .buffer import Execution, NewProgram, ReplayBuffer
from .config import PperConfig, validate_config
from .files import write_atomic
from .errors import PperError
from .jsonl import append_jsonl
from .tasks import Task, holdout_split, load_tasks

CONFIG_FILE = "config.yaml"
TASKS_FILE = "tasks.json"
EVENTS_FILE = "events.jsonl"
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
        sources = [c.eval_source] if isinstance(c.eval_source, str) else c.eval_source
        return train, [t for source in sources for t in load_tasks(source, c.eval_split, c.eval_limit)]
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
    write_atomic(config_path, config.to_yaml())
    write_atomic(run_dir / TASKS_FILE, json.dumps({"train": [t.id for t in train], "eval": [t.id for t in held_out]}))
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
        batch.append(Execution(program.id, result))
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


def checkpoint_dir(run_dir: Path, round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{round}"


def eval_paths(run_dir: Path, round: int) -> tuple[Path, Path]:
    """(samples file, metrics JSON) of round `round`'s evaluation."""
    return run_dir / "samples" / f"round-{round}.jsonl", run_dir / "eval" / f"round-{round}.json"


class Events:
    """The run's event log (`events.jsonl`): phases started and ended, training steps. A killed phase
    has a start without an end; the report sums each phase's time over all its attempts."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, **row: Any) -> None:
        append_jsonl(self.path, [{"time": round(time.time(), 3), **row}])

    @contextmanager
    def phase(self, name: str, round: int) -> Iterator[None]:
        self.log(event="start", phase=name, round=round)
        start = time.perf_counter()
        yield
        self.log(event="end", phase=name, round=round, seconds=round_(time.perf_counter() - start))


def round_(x: float) -> float:
    return round(x, 3)


class Models:
    """The model through the rounds: loaded once, then trained in place; `at(r)` restores round r's
    checkpoint when the run resumes past it."""

    def __init__(self, config: PperConfig, run_dir: Path):
        from .generation import load_model

        self.config, self.run_dir = config, run_dir
        self.model, self.tokenizer, self.name = load_model(config.generation.model, config.generation.dtype)
        self.round = 0
        self._trainer: Any = None
        self._inference: Any = None

    def trainer(self) -> Any:
        if self._trainer is None:
            from .training.trainer import PPERTrainer

            self._trainer = PPERTrainer(self.model, self.tokenizer, self.config.training, self.config.seed)
        return self._trainer

    def at(self, round: int) -> None:
        """Hold the weights of the end of `round` (rounds only move forward)."""
        if round != self.round:
            self.trainer().load(checkpoint_dir(self.run_dir, round))
            self.round, self._inference = round, None

    def trained(self, round: int, inference: Any) -> None:
        self.round, self._inference = round, inference

    def inference(self) -> Any:
        """The model of the current round for sampling and evaluation."""
        if self._inference is None:
            self._inference = self.trainer().inference_model() if self._trainer else self.model.eval()
        return self._inference

    def sampler(self, name: str | None = None) -> Any:
        from .generation import transformers_sampler

        loaded = (self.inference(), self.tokenizer, name or self.name)
        return transformers_sampler(self.config.generation, self.config.seed, loaded)

    def sampler_name(self, round: int) -> str:
        """The name programs sampled with round `round`'s weights are stored under."""
        return self.name if round == 0 else f"{self.name}@{self.config.name}/round-{round}"


def train(models: Models, buffer: ReplayBuffer, round: int, events: Events, show_progress: bool = True) -> None:
    """Train round `round` from the buffer (resuming its in-round checkpoint) and write its checkpoint."""
    from .buffer.replay import Replay
    from .progress import progress
    from .training.trainer import read_info

    config = models.config
    trainer = models.trainer()
    replay = Replay.from_buffer(buffer, config.replay, seed=config.seed + round)
    final = checkpoint_dir(models.run_dir, round)
    partial = final.with_name(final.name + ".partial")
    if read_info(partial):
        trainer.load(partial, replay)
    else:
        trainer.begin_round(round, replay, config.training.steps)
    steps = trainer.run_round(buffer, checkpoint=lambda: trainer.save(partial))
    if show_progress:
        steps = progress(
            steps, trainer.steps, f"training round {round}", "steps", lambda s: f"loss {s.loss:.4f}", trainer.step
        )
    for s in steps:
        events.log(event="step", phase="training", **asdict(s))
    inference = trainer.inference_model()
    trainer.save(final, {"replayed_from": len(replay)}, model=inference)
    models.trained(round, inference)
    shutil.rmtree(partial, ignore_errors=True)


def evaluate_round(
    models: Models, tasks: list[Task], executor: Any, round: int, show_progress: bool = True
) -> dict[str, Any]:
    from .evaluation import evaluate

    e = models.config.evaluation
    samples, metrics = eval_paths(models.run_dir, round)
    return evaluate(
        tasks,
        samples,
        executor,
        sampler=models.sampler(models.sampler_name(round)),
        mode=e.mode,
        n=e.n,
        ks=e.ks,
        metrics_path=metrics,
        info={"round": round, "model": models.sampler_name(round)},
        show_progress=show_progress,
    )


def run(config: PperConfig, force: bool = False, show_progress: bool = True) -> Run:
    """Run (or resume) the BTP rounds of `config` and write the report."""
    from .execution import Executor
    from .generation import teacher_sampler
    from .report import write_report
    from .training.trainer import read_info

    prepared = prepare(config, force=force)
    run_dir, g, x = prepared.dir, config.generation, config.execution
    events = Events(run_dir / EVENTS_FILE)
    events.log(event="run")
    models = Models(config, run_dir)
    done = [r for r in range(1, config.rounds + 1) if read_info(checkpoint_dir(run_dir, r))]
    with (
        ReplayBuffer.in_run(run_dir) as buffer,
        Executor(limits=x.limits, workers=x.workers, isolation=x.isolation) as executor,
    ):
        held_out = prepared.eval
        if held_out and config.evaluation.before and not eval_paths(run_dir, 0)[1].exists():
            with events.phase("evaluation", 0):
                evaluate_round(models, held_out, executor, 0, show_progress)
        if done:
            models.at(done[-1])
        for r in range(1, config.rounds + 1):
            if r not in done:
                sampler = teacher_sampler(g, config.seed) if g.teacher else models.sampler(models.sampler_name(r - 1))
                with events.phase("sampling", r):
                    sample_into_buffer(buffer, sampler, prepared.train, g.mode, g.k, r, show_progress)
                with events.phase("testing", r):
                    execute_untested(buffer, executor, show_progress)
                with events.phase("training", r):
                    train(models, buffer, r, events, show_progress)
            if held_out and not eval_paths(run_dir, r)[1].exists():
                with events.phase("evaluation", r):
                    evaluate_round(models, held_out, executor, r, show_progress)
            write_report(run_dir, config)
    events.log(event="finished")
    return prepared
