"""Arm kinds and buffer fillers: what one arm x seed of a protocol does, as a small registry.

An arm's unit runs in its own run directory, ROOT/ARM/seed-S, in three steps: the runner fills the shared
buffer the arm starts from (once per protocol, `fill_buffer`), the arm's kind prepares the run directory
(`prepare`: copy that buffer in, and whatever the kind needs of its own), and the kind runs it (`execute`:
an ordinary resumable `pper run`, or the base model's evaluation). Every step skips what is already done,
so running the protocol again after an interruption continues.

Kinds:
* `base`: the model before training, evaluated on the held-out tasks (round 0), never trained.
* `replay`: BTP and its ablations: the buffer (a shared one, or none: the run samples its own) replayed by
  the arm's `replay` section, trained for `rounds` of `training.steps` steps.
* `references-sft`: plain supervised fine-tuning on the training tasks' reference solutions: the
  `references` buffer (every reference, tested like any program), replayed uniformly with the same steps as
  the other arms; each round replays the same references (the run never samples).
* `grpo`: online RL (`pper rl`) at the wall-clock of another arm (`budget_from`), its steps counted.

Adding a kind is a subclass of `ArmKind` (usually of `ReplayKind`) registered with `@kind`; a new way to
fill a shared buffer is a function registered in `FILLERS` under its recipe's `source`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..buffer import BUFFER_FILE, NewProgram, ReplayBuffer
from ..config import PperConfig
from ..errors import PperError
from ..files import write_atomic
from ..pipeline import config_changes, eval_paths

if TYPE_CHECKING:
    from ..tasks import Task
    from .protocol import ArmSpec, BufferRecipe, Protocol

FILLED = "filled.json"  # in a shared buffer's directory once it is filled and tested: its statistics
REFERENCES_MODEL = "references"  # the `model` of the programs of a references buffer
PRM_BUFFERS = "buffers.json"  # beside the PRM's labelled copy: the shared buffers it was made from


@dataclass(frozen=True)
class Unit:
    """One arm x seed of a protocol."""

    protocol: Protocol
    arm: str
    seed: int

    @property
    def spec(self) -> ArmSpec:
        return self.protocol.arms[self.arm]

    @property
    def kind(self) -> ArmKind:
        return KINDS[self.spec.kind]

    @cached_property
    def config(self) -> PperConfig:
        return self.protocol.arm_config(self.arm, self.seed)

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def label(self) -> str:
        """The unit's name in the time ledger."""
        return f"{self.arm} seed {self.seed}"

    @property
    def result_round(self) -> int:
        return self.kind.result_round(self.config)

    def done(self) -> bool:
        """Whether the round the arm reports has its held-out metrics, from a run made with the unit's configuration
        (a run the protocol has since changed under, same name, is not this unit's: it is reported as not run)."""
        changed = [k for k in config_changes(self.config) if k not in self.kind.measured]
        return eval_paths(self.run_dir, self.result_round)[1].exists() and not changed


class ArmKind:
    """What an arm of one kind does. The defaults fit an arm that trains through `pper run`."""

    name: ClassVar[str]
    trains: ClassVar[bool] = True
    default_buffer: ClassVar[str | None] = None
    measured: ClassVar[tuple[str, ...]] = ()  # config keys `execute` sets from measurements, not the protocol's
    wall_clock: ClassVar[bool] = False  # budgeted in seconds (`budget_from`), not in equal steps

    def buffer(self, spec: ArmSpec) -> str | None:
        """The shared buffer the arm starts from, if any."""
        return spec.buffer or self.default_buffer

    def check(self, protocol: Protocol, name: str, spec: ArmSpec) -> None:
        """Raise ValueError when the arm's spec cannot work (before any config is built)."""
        buffer = self.buffer(spec)
        if buffer is not None and buffer not in protocol.buffers and buffer != "references":
            raise ValueError(
                f"arm {name!r} names an unknown buffer {buffer!r} (buffers: {', '.join(protocol.buffers)})"
            )

    def overrides(self, protocol: Protocol, name: str, spec: ArmSpec) -> dict[str, Any]:
        """Config sections the kind sets over `common`, before the arm's own overrides."""
        return {}

    def verify(self, name: str, config: PperConfig) -> None:
        """Raise PperError when the arm's resolved configuration contradicts its kind (`name` says where)."""

    def result_round(self, config: PperConfig) -> int:
        """The round whose held-out evaluation the arm reports: its last (arms ship their last round)."""
        return config.rounds

    def budget(self, config: PperConfig) -> dict[str, int] | None:
        """What must be equal between compared arms; None for an arm that does not train."""
        return {"rounds": config.rounds, "training.steps": config.training.steps,
                "training.batch_size": config.training.batch_size}  # fmt: skip

    def prepare(self, unit: Unit) -> None:
        """Ready the run directory: a copy of the shared buffer the arm starts from (once)."""
        buffer = self.buffer(unit.spec)
        target = unit.run_dir / BUFFER_FILE
        if buffer is None or target.exists():
            return
        with ReplayBuffer(buffer_dir(unit.protocol, buffer) / BUFFER_FILE) as source:
            source.copy_to(target)

    def execute(self, unit: Unit) -> None:
        """Run (or resume) the arm's ordinary `pper run`."""
        from ..pipeline import run

        run(unit.config)


KINDS: dict[str, ArmKind] = {}


def kind(cls: type[ArmKind]) -> type[ArmKind]:
    """Register an arm kind under its `name`."""
    KINDS[cls.name] = cls()
    return cls


@kind
class BaseKind(ArmKind):
    """The model before training: its held-out evaluation is round 0."""

    name = "base"
    trains = False

    def check(self, protocol: Protocol, name: str, spec: ArmSpec) -> None:
        if spec.buffer is not None:
            raise ValueError(f"arm {name!r} is the base model: it replays no buffer")

    def overrides(self, protocol: Protocol, name: str, spec: ArmSpec) -> dict[str, Any]:
        return {"rounds": 1, "training": {"steps": 0}, "evaluation": {"before": True}}

    def result_round(self, config: PperConfig) -> int:
        return 0

    def budget(self, config: PperConfig) -> dict[str, int] | None:
        return None

    def execute(self, unit: Unit) -> None:
        from ..evaluation import evaluate
        from ..execution import open_executor
        from ..generation import transformers_sampler
        from ..pipeline import prepare

        config = unit.config
        prepared = prepare(config)
        samples, metrics = eval_paths(prepared.dir, 0)
        x, e = config.execution, config.evaluation
        with open_executor(x) as executor:
            sampler = transformers_sampler(config.generation, config.seed)
            info = {"round": 0, "model": sampler.name}
            if e.turns > 1:
                from ..evaluation.multiturn import evaluate_turns

                evaluate_turns(prepared.eval, samples, executor, sampler, e.turns, config.feedback.max_chars,
                               e.independent, metrics, info)  # fmt: skip
            else:
                evaluate(prepared.eval, samples, executor, sampler, e.mode, e.n, e.ks, metrics, info)


@kind
class ReplayKind(ArmKind):
    """BTP and its ablations: a buffer (shared, or the run's own samples) replayed by the arm's `replay`."""

    name = "replay"

    def overrides(self, protocol: Protocol, name: str, spec: ArmSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"evaluation": {"before": False, "rounds": "last"}}  # arms report their last round
        buffer = self.buffer(spec)
        if buffer is not None:
            # the run's sampler is the buffer's: its first round finds every task sampled and samples nothing
            out["generation"] = protocol.recipe(buffer).generation
        return out


@kind
class ReferencesSFTKind(ReplayKind):
    """Supervised fine-tuning on the training tasks' reference solutions, replayed uniformly; every round
    replays the same references."""

    name = "references-sft"
    default_buffer = "references"

    def check(self, protocol: Protocol, name: str, spec: ArmSpec) -> None:
        super().check(protocol, name, spec)
        buffer = self.buffer(spec)
        if buffer is not None and protocol.recipe(buffer).source != "references":
            raise ValueError(f"arm {name!r} ({self.name}) needs a buffer of source references, not {buffer!r}")

    def overrides(self, protocol: Protocol, name: str, spec: ArmSpec) -> dict[str, Any]:
        return {
            "evaluation": {"before": False, "rounds": "last"},
            "replay": {"priority": "uniform", "min_pass_rate": None},
        }

    def verify(self, name: str, config: PperConfig) -> None:
        r = config.replay
        wrong = [f"replay.{k}: {v!r}" for k, v in (("priority", r.priority), ("min_pass_rate", r.min_pass_rate))
                 if v != {"priority": "uniform", "min_pass_rate": None}[k]]  # fmt: skip
        if wrong:
            raise PperError(f"{name} ({self.name}) replays every reference uniformly: drop {', '.join(wrong)}")

    def prepare(self, unit: Unit) -> None:
        """The references, and every round's sampling recorded as done (with no programs), so the run
        replays the references in every round and never samples."""
        super().prepare(unit)
        config = unit.config
        with ReplayBuffer.in_run(unit.run_dir) as buffer:
            tasks = [t.id for t in buffer.tasks()]
            for r, model in enumerate(pipeline_sampler_names(config), 1):
                done = buffer.sampled_tasks(model, r)
                for task_id in tasks:
                    if task_id not in done:
                        buffer.add_sampled(task_id, model, r, [])


@kind
class GRPOKind(ArmKind):
    """Online RL (`pper rl`: GRPO through TRL on pper's execution reward, with the arm's `rl` section) at equal
    wall-clock: its budget is the measured seconds of the `budget_from` arm's first seed end to end without
    evaluation (filling its shared buffer, and its run's sampling, testing, repair and training phases), since GRPO
    samples for itself; training runs steps until the budget is spent (`rl.max_seconds`; `rl.steps` is a cap)."""

    name = "grpo"
    wall_clock = True
    measured = ("rl.max_seconds",)  # the budget, stored in the run's configuration

    def check(self, protocol: Protocol, name: str, spec: ArmSpec) -> None:
        if spec.buffer is not None:
            raise ValueError(f"arm {name!r} ({self.name}) samples for itself: it takes no buffer")
        source = spec.budget_from
        if source is None or source not in protocol.arms or not KINDS[protocol.arms[source].kind].trains:
            raise ValueError(f"arm {name!r} ({self.name}) needs `budget_from`: the arm whose wall-clock time it gets")
        if list(protocol.arms).index(source) > list(protocol.arms).index(name):
            raise ValueError(f"arm {name!r} ({self.name}): list its budget arm {source!r} before it")

    def overrides(self, protocol: Protocol, name: str, spec: ArmSpec) -> dict[str, Any]:
        return {"rounds": 1, "evaluation": {"before": False, "rounds": "last"}, "rl": {"steps": 100_000}}

    def result_round(self, config: PperConfig) -> int:
        return 1

    def budget(self, config: PperConfig) -> dict[str, int] | None:
        return None  # a wall-clock budget, measured and enforced when the arm runs (not equal steps)

    def seconds(self, protocol: Protocol, source: str) -> float:
        """The wall-clock budget: the `source` arm's first seed's filling of its buffer and its run's phases
        other than evaluation, from the protocol's ledger and the run's events."""
        from ..jsonl import read_jsonl
        from ..pipeline import EVENTS_FILE
        from ..report import phase_seconds
        from .runner import ledger, spent

        unit = Unit(protocol, source, protocol.arms[source].seeds[0])
        if not unit.done():
            raise PperError(f"the budget arm {source} seed {unit.seed} has not finished: run it first")
        buffer = unit.kind.buffer(unit.spec)
        filled = spent(ledger(protocol.root)).get(f"buffer {buffer}", 0.0) if buffer else 0.0
        phases = phase_seconds(read_jsonl(unit.run_dir / EVENTS_FILE))
        trained = sum(t for r in phases.values() for p, t in r.items() if p not in ("evaluation", "validation"))
        return filled + trained

    def execute(self, unit: Unit) -> None:
        from ..rl.grpo import run_rl

        seconds = self.seconds(unit.protocol, unit.spec.budget_from)
        config = unit.config.model_copy(update={"rl": unit.config.rl.model_copy(update={"max_seconds": seconds})})
        run_rl(config, force=True)


def pipeline_sampler_names(config: PperConfig) -> list[str]:
    """The sampler name `pper run` records round r's sampling under, for r = 1..rounds: the base model's
    name in round 1, then the model trained in the round before (`pipeline.sampler_name`)."""
    from ..generation import resolve_model
    from ..pipeline import sampler_name

    name = resolve_model(config.generation.model)[0]
    return [sampler_name(name, config.name, r - 1) for r in range(1, config.rounds + 1)]


# -- shared buffers ----------------------------------------------------------------------------


def buffer_dir(protocol: Protocol, buffer: str) -> Path:
    return protocol.root / "buffers" / buffer


def buffer_filled(protocol: Protocol, buffer: str) -> bool:
    return (buffer_dir(protocol, buffer) / FILLED).exists()


def fill_buffer(protocol: Protocol, buffer: str) -> Path:
    """Fill and test the shared buffer `buffer` once (resumable); its directory."""
    target = buffer_dir(protocol, buffer)
    if buffer_filled(protocol, buffer):
        return target
    recipe = protocol.recipe(buffer)
    config = protocol.buffer_config(buffer)
    FILLERS[recipe.source](config, recipe)
    with ReplayBuffer.in_run(target) as store:
        write_atomic(target / FILLED, json.dumps(store.stats(), indent=2) + "\n")
    return target


def prm_trained(protocol: Protocol) -> bool:
    from ..prm.model import INFO_FILE

    return (protocol.prm_model / INFO_FILE).exists()


def make_prm(protocol: Protocol) -> Path:
    """Label the programs of the protocol's PRM buffers and train the PRM on them, once (resumable: labelling
    continues with the programs not labelled yet, training from its last checkpoint); the trained PRM's directory.
    The shared buffers are filled first if needed; a copy of the first under ROOT/prm/labels, the others' tested
    programs added to it, is labelled, never the buffers themselves."""
    import yaml

    from ..prm.label import label_run
    from ..prm.train import train_prm

    assert protocol.prm is not None
    labels = protocol.prm_config().run_dir
    if (labels / BUFFER_FILE).exists() and prm_buffers(protocol) != protocol.prm.buffers:
        raise PperError(
            f"{labels.parent} was made from the buffers {' + '.join(prm_buffers(protocol))}, but the protocol's "
            f"prm.buffer now names {' + '.join(protocol.prm.buffers)}: remove {labels.parent} to make it again"
        )
    if prm_trained(protocol):
        return protocol.prm_model
    sources = [fill_buffer(protocol, name) for name in protocol.prm.buffers]
    config = protocol.prm_config()
    labels.mkdir(parents=True, exist_ok=True)
    write_atomic(labels / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if not (labels / BUFFER_FILE).exists():  # made aside and renamed: a killed merge leaves nothing half-made
        staging = labels / (BUFFER_FILE + ".merging")
        staging.unlink(missing_ok=True)
        with ReplayBuffer(sources[0] / BUFFER_FILE) as store:
            store.copy_to(staging)
        with ReplayBuffer(staging) as merged:
            for source in sources[1:]:
                with ReplayBuffer(source / BUFFER_FILE) as store:
                    merged.add_tested_from(store)
        write_atomic(labels / PRM_BUFFERS, json.dumps(protocol.prm.buffers) + "\n")
        staging.rename(labels / BUFFER_FILE)
    label_run(labels, show_progress=True)
    train_prm(labels, out=protocol.prm_model)
    return protocol.prm_model


def prm_buffers(protocol: Protocol) -> list[str]:
    """The shared buffers the protocol's labelled copy was made from (ROOT/prm/labels/buffers.json; a copy made
    before that file existed was made from `prm.buffer` alone, then always one buffer)."""
    assert protocol.prm is not None
    try:
        return json.loads((protocol.prm_config().run_dir / PRM_BUFFERS).read_text())
    except OSError:
        return protocol.prm.buffers[:1]


def prm_stats(protocol: Protocol, seconds: float) -> dict[str, Any] | None:
    """The protocol's PRM once trained: what labelling it cost (programs, probes, seconds of labelling and
    training), its labels' class balance and its validation ROC AUC against the baselines."""
    if not prm_trained(protocol):
        return None
    from ..prm.model import INFO_FILE

    info = json.loads((protocol.prm_model / INFO_FILE).read_text())
    with ReplayBuffer.reading(protocol.prm_config().run_dir / BUFFER_FILE) as store:
        searches = store.line_searches()
    labels = [x for s in searches.values() for x in s.labels]
    return {
        "buffers": prm_buffers(protocol),
        "programs": len(searches),
        "probes": sum(len(s.probes) for s in searches.values()),
        "contradicted": sum(bool(s.contradictions) for s in searches.values()),
        "lines": len(labels),
        "good_share": sum(labels) / len(labels) if labels else None,
        "label_seconds": sum(s.seconds for s in searches.values()),
        "seconds": seconds,
        "auc": info["auc"],
        "auc_by_model": info.get("auc_by_model", {}),
        "balance": info["balance"],
        "completer": sorted({s.completer for s in searches.values()}),
    }


def _executor(config: PperConfig) -> Any:
    from ..execution import open_executor

    return open_executor(config.execution)


def fill_by_sampling(config: PperConfig, recipe: BufferRecipe) -> None:
    """The base model samples every training task (round 1, as `pper run` would), then every program is tested."""
    from ..generation import transformers_sampler
    from ..pipeline import execute_untested, prepare, sample_into_buffer

    prepared = prepare(config)
    g = config.generation
    with ReplayBuffer.in_run(prepared.dir) as store, _executor(config) as executor:
        sample_into_buffer(store, transformers_sampler(g, config.seed), prepared.train, g.mode, g.k, round=1)
        execute_untested(store, executor, coverage=True)  # shared by arms: FGO arms read it


def fill_with_references(config: PperConfig, recipe: BufferRecipe) -> None:
    """Every reference solution of every training task (none of a held-out task), with its log-probability
    under the base model, then every program is tested like a sampled one."""
    from ..pipeline import execute_untested, prepare

    prepared = prepare(config)
    with ReplayBuffer.in_run(prepared.dir) as store, _executor(config) as executor:
        todo = [(t, s) for t in prepared.train for s in t.solutions]
        if todo and not store.programs():  # added in one transaction: all of them, or none yet
            scored = score_programs(config, todo)
            store.add_programs(
                NewProgram(t.id, s, lp, n, REFERENCES_MODEL) for (t, s), (lp, n) in zip(todo, scored, strict=True)
            )
        if not store.programs():
            raise PperError(f"no training task of {config.tasks.source} has a reference solution")
        execute_untested(store, executor, coverage=True)  # shared by arms: FGO arms read it


FILLERS: dict[str, Callable[[PperConfig, BufferRecipe], None]] = {
    "model": fill_by_sampling,
    "references": fill_with_references,
}


def score_programs(config: PperConfig, programs: list[tuple[Task, str]]) -> list[tuple[float, int]]:
    """(log P(program), tokens) of each (task, program) under the configuration's model, in the example
    training replays it in and over the program's own tokens (`pper.training.program_logprobs`). A program
    none of whose tokens fits in `training.max_length` counts one token of probability 1."""
    from ..generation import load_model
    from ..training import program_logprobs

    model, tokenizer, _ = load_model(config.generation.model, config.generation.dtype)
    logprob, count = program_logprobs(model, tokenizer, programs, config.training.max_length)
    return [(float(lp), max(int(n), 1)) for lp, n in zip(logprob, count, strict=True)]
