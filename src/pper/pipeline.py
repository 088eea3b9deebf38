"""The BTP pipeline: sample -> test -> PPER fine-tune -> evaluate, in rounds, resumable.

Every step persists what it did in the run directory before the next one starts, and every step skips
what is already there, so a killed run resumes where it stopped:

* sampling: one buffer transaction per task (tasks sampled in this round are skipped);
* testing: executions committed in batches (untested programs are the rest);
* PRM scoring (`replay.prm_weight` > 0): the run's PRM (`prm.model`, default RUN/prm) scores the lines of the
  programs tested so far that it has not scored, for P2Value's PRM term (stored per 64 programs);
* training: a checkpoint every `training.checkpoint_every` steps and at the end of the round;
* evaluation: samples and results appended per task and per program, metrics written at the end.

Round 0 is the model before training; round r samples with the model of round r - 1, trains round r's
checkpoint on the whole buffer, and evaluates it. Every round, round 0 included, is evaluated on the
validation tasks (a seeded part of the training tasks, never sampled or trained on) and on the held-out
tasks (round 0 there only when `evaluation.before`). After the last round the run keeps the round with
the best validation pass rate (ties keep the earlier round; without validation tasks, the last round) as
`model/`, a plain transformers directory, and records the choice in `kept.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .buffer import BUFFER_FILE, Execution, NewProgram, ReplayBuffer
from .config import PperConfig, read_run_config
from .errors import PperError
from .files import exclusive, write_atomic
from .jsonl import append_jsonl
from .tasks import Task, holdout_split, load_tasks

CONFIG_FILE = "config.yaml"
TASKS_FILE = "tasks.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".lock"  # held by the process running the rounds (`files.exclusive`)
KEPT_FILE = "kept.json"
MODEL_DIR = "model"
MIN_VALIDATION_TASKS = 10  # fewer and the choice of the kept round is mostly noise: warn
TIE = 1e-12  # validation pass rates closer than this are a tie (the earlier round is kept)
TEST_BATCH = 64  # executions committed together: a killed run loses at most one batch of test work


@dataclass
class Run:
    """A prepared run directory."""

    config: PperConfig
    dir: Path
    train: list[Task]
    eval: list[Task]
    validation: list[Task]


def split_tasks(config: PperConfig) -> tuple[list[Task], list[Task], list[Task]]:
    """(training, validation, held-out tasks) as the config asks.

    Held out: the `eval_source` tasks, else a seeded `holdout` fraction of the source; a held-out task is never
    trained on, even where `eval_source` overlaps `source` (it is dropped from training, with a warning).
    Validation: a seeded `validation` fraction of the tasks left for training (never a source's own split).
    """
    c = config.tasks
    train = load_tasks(c.source, c.split, c.limit)
    if c.eval_source is not None:
        sources = [c.eval_source] if isinstance(c.eval_source, str) else c.eval_source
        held_out = [t for source in sources for t in load_tasks(source, c.eval_split, c.eval_limit)]
        ids = {t.id for t in held_out}
        both = [t.id for t in train if t.id in ids]
        if both:
            warnings.warn(
                f"{len(both)} of the {len(train)} tasks of tasks.source are also held out by tasks.eval_source "
                f"(e.g. {both[0]}): they are not trained on (give tasks.split / tasks.eval_split to separate them)",
                stacklevel=3,
            )
            train = [t for t in train if t.id not in ids]
    else:
        train, held_out = holdout_split(train, c.holdout, config.seed)
    train, validation = holdout_split(train, c.validation, config.seed)
    return train, validation, held_out


def prepare(config: PperConfig, force: bool = False) -> Run:
    """Create or reopen the run directory of `config`.

    A directory made by a different config is refused unless `force` (then the new config replaces it).
    So is a buffer holding programs of tasks the config holds out (validation or held-out): training would
    replay them, and the metrics would measure tasks the model was trained on.
    """
    run_dir = config.run_dir
    config_path = run_dir / CONFIG_FILE
    changed = [] if force else config_changes(config)
    if changed:
        raise PperError(
            f"{run_dir} was made by another configuration (differs in: {', '.join(changed)}); "
            "use another run name, or --force to continue it with this configuration"
        )
    train, validation, held_out = split_tasks(config)
    if not train:
        raise PperError(
            f"no training tasks: {config.tasks.source} with split {config.tasks.split!r} leaves none once "
            f"tasks.holdout and tasks.validation ({config.tasks.validation}) are set aside"
        )
    if config.tasks.validation > 0 and len(validation) < MIN_VALIDATION_TASKS:
        warnings.warn(
            f"only {len(validation)} validation tasks (tasks.validation = {config.tasks.validation} of "
            f"{len(train) + len(validation)} training tasks): the kept round is chosen on very few tasks"
            + ("" if validation else ", so the last round is kept"),
            stacklevel=2,
        )
    if config.feedback.turns > 1 and not any(t.public_tests for t in train):
        warnings.warn(
            f"feedback.turns is {config.feedback.turns} but none of the {len(train)} training tasks has public tests "
            "(the tests a repair turn's feedback may show), so no program gets a repair turn: use tasks with "
            "public tests (MBPP, HumanEval, CodeContests, APPS standard-input, JSONL rows with public_tests)",
            stacklevel=2,
        )
    if (run_dir / BUFFER_FILE).exists():
        _refuse_held_out_programs(run_dir, {t.id for t in validation + held_out})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(config_path, config.to_yaml())
    ids = {"train": [t.id for t in train], "validation": [t.id for t in validation], "eval": [t.id for t in held_out]}
    write_atomic(run_dir / TASKS_FILE, json.dumps(ids))
    with ReplayBuffer.in_run(run_dir) as buffer:
        buffer.add_tasks(train)
    return Run(config=config, dir=run_dir, train=train, eval=held_out, validation=validation)


def _refuse_held_out_programs(run_dir: Path, held_out: set[str]) -> None:
    """Raise if the run's buffer holds programs of `held_out` tasks (a split changed under a run)."""
    with ReplayBuffer.in_run(run_dir) as buffer:
        leaked = sorted({p.task_id for p in buffer.programs()} & held_out)
    if leaked:
        raise PperError(
            f"{run_dir / BUFFER_FILE} holds programs of {len(leaked)} task(s) this configuration holds out for "
            f"validation or evaluation (e.g. {leaked[0]}): training would replay them and the metrics would "
            "measure tasks the model was trained on. The split changed (tasks.*, seed); start a new run "
            f"(another --name) or delete {run_dir}"
        )


def config_changes(config: PperConfig) -> list[str]:
    """The keys in which the configuration stored in `config`'s run directory differs from `config` (none: the
    same, or no run directory yet)."""
    path = config.run_dir / CONFIG_FILE
    if not path.exists():
        return []
    stored = read_run_config(path)
    return [] if stored == config else _changed_keys(stored.model_dump(mode="json"), config.model_dump(mode="json"))


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(prefix + k)
    return keys


def evaluates(config: PperConfig, round: int) -> bool:
    """Whether round `round` is evaluated on the held-out tasks: round 0 with `evaluation.before`, the last
    round always, the rounds between unless `evaluation.rounds` is "last"."""
    if round == 0:
        return config.evaluation.before
    return config.evaluation.rounds == "all" or round == config.rounds


def uses_coverage(config: PperConfig) -> bool:
    """Whether anything in the run reads line coverage (FGO), so that the test phase collects it."""
    return config.training.loss_mask == "executed"


def execute_untested(buffer: ReplayBuffer, executor, show_progress: bool = True, coverage: bool = False) -> int:
    """Run every untested program of the buffer against its task's tests and store the executions (with
    `coverage`, also the lines of each program that ran).

    Commits in batches of `TEST_BATCH` results in the order they finish (this process alone writes the
    buffer, whatever the executor's back-end), so a killed run keeps what it tested and resumes with the rest.
    Returns how many programs were tested.
    """
    from .progress import progress

    untested = buffer.untested()
    tasks = {t.id: t for t in buffer.tasks()}
    results = executor.map_unordered(((tasks[p.task_id], p.text) for p in untested), coverage=coverage)
    if show_progress:
        results = progress(results, len(untested), "testing", "programs")
    batch: list[Execution] = []
    for i, result in results:  # in the order they finish
        batch.append(Execution(untested[i].id, result))
        if len(batch) >= TEST_BATCH:
            buffer.add_executions(batch)
            batch = []
    buffer.add_executions(batch)
    return len(untested)


def sample_into_buffer(
    buffer: ReplayBuffer,
    sampler,
    tasks: list[Task],
    mode: str,
    k: int,
    round: int = 0,
    show_progress: bool = True,
    prefixes: dict[str, str] | None = None,
    select: Callable[[Task, list[Any]], list[Any]] | None = None,
    prefill_stops: bool = True,
) -> int:
    """Sample `k` candidates for every task `sampler` has not sampled in `round` yet and store them, one
    transaction per task, so a killed run resumes with the tasks it had not finished. `prefixes`: task id ->
    the start of the program the model is given (a curriculum stage), stored with each program, a prefilled
    answer stopping at its stop strings unless `prefill_stops` is False (`curriculum.prefill_stops`). `select`:
    (task, its candidates) -> the candidates stored (reranking: `pper.prm.rerank.Rerank`); default all of them.
    Returns how many tasks were sampled now."""
    from .progress import progress

    buffer.add_tasks(tasks)
    done = buffer.sampled_tasks(sampler.name, round)
    todo = [t for t in tasks if t.id not in done]
    if prefixes:
        results = sampler.sample(todo, mode, k, prefixes=prefixes, prefill_stops=prefill_stops)
    else:
        results = sampler.sample(todo, mode, k)
    if show_progress:
        results = progress(results, len(todo), f"sampling ({mode}, k={k})", "tasks")
    for task, candidates in results:
        kept = select(task, candidates) if select is not None else candidates
        programs = [NewProgram(task.id, c.program, c.logprob, c.num_tokens, c.model, round, c.prefix) for c in kept]
        buffer.add_sampled(task.id, sampler.name, round, programs)
    return len(todo)


def checkpoint_dir(run_dir: Path, round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{round}"


def eval_paths(run_dir: Path, round: int, validation: bool = False) -> tuple[Path, Path]:
    """(samples file, metrics JSON) of round `round`'s evaluation on the held-out tasks, or on the
    validation tasks (`samples/validation/`, `eval/validation/`)."""
    sub = "validation/" if validation else ""
    return run_dir / "samples" / f"{sub}round-{round}.jsonl", run_dir / "eval" / f"{sub}round-{round}.json"


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


def sampler_name(model: str, run: str, round: int) -> str:
    """The name under which run `run` stores programs sampled with the weights of the end of `round`: the
    loaded model's own name for round 0, `MODEL@RUN/round-N` after training."""
    return model if round == 0 else f"{model}@{run}/round-{round}"


class Models:
    """The model through the rounds: loaded once, then trained in place; `at(r)` restores round r's
    checkpoint when the run resumes past it."""

    def __init__(self, config: PperConfig, run_dir: Path, group: Any = None):
        from .generation import load_model

        self.config, self.run_dir, self.group = config, run_dir, group
        self.model, self.tokenizer, self.name = load_model(config.generation.model, config.generation.dtype)
        self.round = 0
        self._trainer: Any = None
        self._inference: Any = None

    def trainer(self) -> Any:
        if self._trainer is None:
            from .training.trainer import PPERTrainer

            self._trainer = PPERTrainer(self.model, self.tokenizer, self.config.training, self.config.seed, self.group)
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
        """A sampler on the current round's model: in this process, or `generation.replicas` Ray actors."""
        g = self.config.generation
        if g.backend == "ray":
            from .generation.ray_sampler import RaySampler

            address = self.config.execution.ray.address
            return RaySampler(self.inference(), self.tokenizer, name or self.name, g, self.config.seed, address)
        from .generation import transformers_sampler

        return transformers_sampler(g, self.config.seed, (self.inference(), self.tokenizer, name or self.name))

    @contextmanager
    def sampling(self, name: str | None = None) -> Iterator[Any]:
        """`sampler(name)` for a block, closed after it (Ray replicas release their CPUs, GPUs and weights)."""
        sampler = self.sampler(name)
        try:
            yield sampler
        finally:
            if hasattr(sampler, "close"):
                sampler.close()

    def sampler_name(self, round: int) -> str:
        """The name programs sampled with round `round`'s weights are stored under."""
        return sampler_name(self.name, self.config.name, round)


def train(
    models: Models, buffer: ReplayBuffer, round: int, events: Events, show_progress: bool = True, prm: str | None = None
) -> None:
    """Train round `round` from the buffer (resuming its in-round checkpoint) and write its checkpoint; `prm`: the
    PRM whose scores P2Value reads (`replay.prm_weight`) where `replay.prm` names none."""
    from .progress import progress
    from .training import replay_for_round
    from .training.trainer import read_info

    config = models.config
    trainer = models.trainer()
    if prm is not None and config.replay.prm is None:
        config = config.model_copy(update={"replay": config.replay.model_copy(update={"prm": prm})})
    replay = replay_for_round(buffer, config, trainer.model, models.tokenizer, seed=config.seed + round)
    final = checkpoint_dir(models.run_dir, round)
    partial = final.with_name(final.name + ".partial")
    if models.group is not None:  # the other ranks train this round with rank 0 (`follow`)
        models.group.threads(training=True)
        held = checkpoint_dir(models.run_dir, models.round) if models.round else None
        models.group.send(
            {
                "train": round,
                "steps": config.training.steps,
                "weights": (models.round, str(held) if held else None),
                "resume": str(partial) if read_info(partial) else None,
            }
        )
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
    if models.group is not None:
        models.group.threads(training=False)
    inference = trainer.inference_model()
    trainer.save(final, {"replayed_from": len(replay)}, model=inference)
    models.trained(round, inference)
    shutil.rmtree(partial, ignore_errors=True)


def evaluate_round(
    models: Models, tasks: list[Task], executor: Any, round: int, show_progress: bool = True, validation: bool = False
) -> dict[str, Any]:
    from .evaluation import evaluate

    e = models.config.evaluation
    samples, metrics = eval_paths(models.run_dir, round, validation)
    if e.turns > 1 and not validation:  # the validation split chooses the kept round on single-turn scores
        from .evaluation.multiturn import evaluate_turns

        name = models.sampler_name(round)
        with models.sampling(name) as sampler:
            return evaluate_turns(
                tasks,
                samples,
                executor,
                sampler,
                e.turns,
                models.config.feedback.max_chars,
                e.independent,
                metrics,
                {"round": round, "model": name},
                show_progress,
            )
    with models.sampling(models.sampler_name(round)) as sampler:
        return evaluate(
            tasks,
            samples,
            executor,
            sampler=sampler,
            mode=e.mode,
            n=e.n,
            ks=e.ks,
            metrics_path=metrics,
            info={"round": round, "model": models.sampler_name(round)},
            show_progress=show_progress,
        )


def run(config: PperConfig, force: bool = False, show_progress: bool = True) -> Run | None:
    """Run (or resume) the BTP rounds of `config` and write the report. Started by a launcher in several
    processes (`pper.training.distributed`), rank 0 runs the rounds and the other ranks `follow` it (and
    return None)."""
    from .training import distributed

    group = distributed.current(config.training.distributed_timeout)
    if group is not None:
        group.threads(training=False)
    if group is not None and not group.main:
        follow(config, group)
        return None
    if group is not None and config.training.batch_size < group.size:
        raise PperError(
            f"training.batch_size {config.training.batch_size} is smaller than the {group.size} processes: "
            "every process trains on its share of each minibatch"
        )
    with exclusive(config.run_dir / LOCK_FILE, f"run directory {config.run_dir}"):
        return _run(config, force, show_progress, group)


def _run(config: PperConfig, force: bool, show_progress: bool, group: Any) -> Run:
    """`run` on rank 0 (or a single process), holding the run directory's lock."""
    from .curriculum import prefixes_for_round
    from .execution import open_executor
    from .generation import teacher_sampler
    from .prm.model import PRM
    from .prm.train import prm_dir, score_programs
    from .repair import repair_into_buffer
    from .report import write_report
    from .training.trainer import read_info

    prepared = prepare(config, force=force)
    run_dir, g, x = prepared.dir, config.generation, config.execution
    events = Events(run_dir / EVENTS_FILE)
    events.log(event="run", **({"processes": group.size} if group else {}))
    models = Models(config, run_dir, group)
    if group is not None:
        group.send({"ready": True})  # the model is in the cache now: the other ranks load it
    done = [r for r in range(1, config.rounds + 1) if read_info(checkpoint_dir(run_dir, r))]
    validation, held_out = prepared.validation, prepared.eval
    if config.replay.prm_weight > 0 or g.rerank == "prm":
        prm_dir(config, run_dir)  # no trained PRM: refused now, not after a round's sampling
    prm = lru_cache(maxsize=1)(lambda: PRM.load(prm_dir(config, run_dir)))  # loaded once, when first used
    with (
        ReplayBuffer.in_run(run_dir) as buffer,
        open_executor(x) as executor,
    ):
        if x.backend == "ray":  # where the programs run, and with what isolation, per pool
            events.log(event="execution", backend="ray", pools=executor.nodes)
        for r in range(config.rounds + 1):
            if r > 0 and r not in done:
                if r - 1 in done:
                    models.at(r - 1)  # resumed: continue from the last finished round's weights
                prefixes = None
                if config.curriculum.enabled:
                    prefixes = prefixes_for_round(buffer, prepared.train, r, config.curriculum)
                sampling = (
                    nullcontext(teacher_sampler(g, config.seed))
                    if g.teacher
                    else models.sampling(models.sampler_name(r - 1))
                )
                with sampling as sampler:
                    with events.phase("sampling", r):
                        select = None
                        if g.rerank == "prm":  # sample `candidates`, keep the PRM's top k (`pper.prm.rerank`)
                            from .prm.rerank import Rerank

                            select = Rerank(prm(), g.k, config.prm.max_length)
                        draw = g.candidates if select is not None and g.candidates else g.k
                        sample_into_buffer(
                            buffer,
                            sampler,
                            prepared.train,
                            g.mode,
                            draw,
                            r,
                            show_progress,
                            prefixes,
                            select,
                            config.curriculum.prefill_stops,
                        )
                        if select is not None:
                            events.log(event="rerank", round=r, prm=prm().info.get("id"), tasks=select.tasks,
                                       sampled=select.sampled, kept=select.kept)  # fmt: skip
                    with events.phase("testing", r):
                        execute_untested(buffer, executor, show_progress, coverage=uses_coverage(config))
                    if config.feedback.turns > 1:
                        with events.phase("repair", r):
                            repair_into_buffer(
                                buffer,
                                sampler,
                                executor,
                                prepared.train,
                                r,
                                config.feedback,
                                lambda: execute_untested(
                                    buffer, executor, show_progress, coverage=uses_coverage(config)
                                ),
                                show_progress,
                            )
                if config.replay.prm_weight > 0:  # the PRM's line scores of the new programs, for P2Value
                    with events.phase("prm", r):
                        scored = score_programs(buffer, prm(), config.prm.max_length, show_progress)
                        events.log(event="prm_scores", round=r, **scored)
                with events.phase("training", r):
                    run_prm = prm().info["id"] if config.replay.prm_weight > 0 else None  # its own, not the last stored
                    train(models, buffer, r, events, show_progress, run_prm)
            if validation and not eval_paths(run_dir, r, validation=True)[1].exists():
                models.at(r)
                with events.phase("validation", r):
                    evaluate_round(models, validation, executor, r, show_progress, validation=True)
            if held_out and evaluates(config, r) and not eval_paths(run_dir, r)[1].exists():
                models.at(r)
                with events.phase("evaluation", r):
                    evaluate_round(models, held_out, executor, r, show_progress)
            if r > 0:
                write_report(run_dir, config)
    del models
    keep(run_dir, config, bool(validation))
    write_report(run_dir, config)
    events.log(event="finished")
    if group is not None:
        group.send({"stop": True})
    return prepared


def follow(config: PperConfig, group: Any) -> None:
    """A data-parallel rank other than 0: load the model once rank 0 has, then train each round with rank 0
    on the minibatches it shares, until it says stop (`pper.training.distributed`)."""
    from .generation import load_model
    from .training.trainer import PPERTrainer

    message = group.receive()
    if "stop" in message:
        return
    group.threads(training=True)  # this rank only trains
    model, tokenizer, _ = load_model(config.generation.model, config.generation.dtype)
    trainer = PPERTrainer(model, tokenizer, config.training, config.seed, group)
    held = 0  # the round whose weights this rank holds
    while "stop" not in (message := group.receive()):
        round, (weights_round, weights) = message["train"], message["weights"]
        if message["resume"]:
            trainer.load(message["resume"], resume=True)
        else:
            if weights_round != held:
                trainer.load(weights)
            trainer.begin_round(round, None, message["steps"])
        for _ in trainer.run_round(None):
            pass
        held = round


# -- the kept model ------------------------------------------------------------------------------


def best_round(scores: dict[int, float]) -> int:
    """The round with the highest score; a later round must beat an earlier one by more than `TIE`, so
    ties keep the earlier round (round 0, the base model, unless a round does better)."""
    best = min(scores)
    for r in sorted(scores):
        if scores[r] > scores[best] + TIE:
            best = r
    return best


def choose_kept(per_task: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The kept round from each round's per-task validation pass rates, as `kept.json` records it.

    Tasks scored in every round are compared. The kept round has the best mean pass rate (`best_round`);
    `difference` is its mean per-task gain over round 0 with the paired 95% bootstrap interval over the
    validation tasks (`evaluation.stats.paired_bootstrap`, 10,000 resamples, seed 0).
    """
    from .evaluation.stats import paired_bootstrap

    if 0 not in per_task:
        raise ValueError("choosing the kept round needs round 0's validation scores")
    ids = sorted(set.intersection(*(set(scores) for scores in per_task.values())))
    if not ids:
        raise PperError("no validation task was scored in every round: cannot choose the kept round")
    rates = {r: [per_task[r][t] for t in ids] for r in sorted(per_task)}
    means = {r: sum(v) / len(v) for r, v in rates.items()}
    kept = best_round(means)
    difference, low, high = paired_bootstrap(rates[kept], rates[0])
    return {
        "round": kept,
        "validation": {
            "tasks": len(ids),
            "pass_rates": {str(r): m for r, m in means.items()},
            "round_0_pass_rate": means[0],
            "pass_rate": means[kept],
            "difference": difference,
            "interval": [low, high],
        },
    }


def keep(run_dir: Path, config: PperConfig, validation: bool) -> dict[str, Any]:
    """Choose the kept round of a finished run, write it as `model/` and record it in `kept.json`."""
    from .evaluation.evaluate import per_task_pass_rates

    if validation:
        per_task = {r: per_task_pass_rates(eval_paths(run_dir, r, True)[0]) for r in range(config.rounds + 1)}
        record = choose_kept(per_task)
        record["rule"] = "the best validation pass rate; ties keep the earlier round"
    else:
        record = {"round": config.rounds, "validation": None, "rule": "no validation tasks: the last round"}
    r = record["round"]
    record["from"] = (
        f"base model {config.generation.model}" if r == 0 else str(Path("checkpoints", f"round-{r}", "model"))
    )
    write_kept(run_dir, config, record)
    return record


def write_kept(run_dir: Path, config: PperConfig, record: dict[str, Any]) -> None:
    """Put round `record["round"]`'s model at `run_dir/model/`, then write `record` as `kept.json`.

    `kept.json` is removed first and written last, and `model/` is replaced by renames, so a run killed
    at any point leaves either both consistent or no `kept.json` (no kept model yet: `kept_model` says so
    and the next run writes it). Done already (the same record and a model directory) is a no-op.
    """
    from .files import replace_dir

    kept_path, target = run_dir / KEPT_FILE, run_dir / MODEL_DIR
    if read_kept(run_dir) == record and (target / "config.json").exists():
        return
    kept_path.unlink(missing_ok=True)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if record["round"] == 0:
        _save_base_model(config, staging)
    else:
        shutil.copytree(checkpoint_dir(run_dir, record["round"]) / MODEL_DIR, staging, copy_function=_link_or_copy)
    replace_dir(staging, target)
    write_atomic(kept_path, json.dumps(record, indent=2) + "\n")


def _save_base_model(config: PperConfig, path: Path) -> None:
    """The configured model before training, as a plain transformers directory at `path`."""
    from .generation import load_model

    model, tokenizer, _ = load_model(config.generation.model, config.generation.dtype, device="cpu")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (checkpoint files are never modified in place, so
    the kept model shares their disk space), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_kept(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's `kept.json`, or None before a kept model is written."""
    try:
        return json.loads((Path(run_dir) / KEPT_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_config_with_buffer(run_dir: str | Path) -> PperConfig:
    """The stored configuration of a run directory that has a buffer (what `pper prm` reads); a clear error for a
    path that is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / BUFFER_FILE).is_file():
        raise PperError(f"{run_dir} is not a pper run directory with a buffer ({CONFIG_FILE}, {BUFFER_FILE})")
    return read_run_config(run_dir / CONFIG_FILE)


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a pper run directory (not a model directory)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / TASKS_FILE).is_file()


def kept_model(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the kept model directory, `kept.json`) of a run directory, or a clear error when it has none."""
    run_dir = Path(run_dir)
    record = read_kept(run_dir)
    if record is None or not (run_dir / MODEL_DIR / "config.json").exists():
        raise PperError(
            f"{run_dir} has no kept model yet: `pper run` writes {run_dir / MODEL_DIR} and {KEPT_FILE} after "
            "its last round is evaluated; run the same `pper run` command again to finish it"
        )
    return run_dir / MODEL_DIR, record
