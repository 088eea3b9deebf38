"""An experiment protocol: arms, their seeds, the buffers they share and the comparisons to report.

A protocol is a YAML file (configs/experiments/ has examples):

    name: small                     # the protocol's runs go under RUNS_DIR/NAME
    runs_dir: runs/experiments
    extends: other.yaml             # optional: start from that protocol (beside this file), merge this in
    common: {...}                   # a pper configuration every arm starts from
    buffers:                        # buffer recipes: each is filled once and copied into every arm using it
      beam: {mode: beam, k: 3}      # source model (the default): the base model samples, with these
                                    #   `generation` settings, then every program is tested
      refs: {source: references}    # the training tasks' reference solutions, tested
    arms:
      base: {kind: base}            # the model before training (evaluated, never trained)
      btp-rank: {buffer: beam, seeds: [0, 1, 2], replay: {priority: rank, alpha: 0.5}}
      references-sft: {kind: references-sft}
    prm: {buffer: beam, completer: reference, steps: 200}   # optional: the protocol's PRM (below)
    compare: [[btp-rank, references-sft]]   # pairs a, b whose paired difference a - b is reported
    alpha_sweep: [btp-rank, ...]            # arms that make the alpha plot (each sets replay.alpha)

An arm is a kind (arms.py: `replay` by default), the buffer it starts from, its seeds, and overrides of
the common configuration (any section of a pper config but name, runs_dir and seed, which the runner sets).
Every arm is compared with the base model; arms compared with each other (`compare`, the alpha sweep) must
train with equal rounds, steps and batch size, hence equal examples: a protocol that breaks this is refused.
Arms ship their last round, so `tasks.validation` is 0 in every arm (set by the runner).

An arm that uses a process reward model (`replay.prm_weight`, `generation.rerank: prm`, `rl.prm_weight`) uses the
protocol's PRM (`prm`: its `prm.model` is set to it unless the arm names another): the runner labels the programs
of the shared buffer `prm.buffer` (or of several, `buffer: [beam, references]`, their programs together) once
(`pper prm label`, with the `prm` settings given beside `buffer`) and trains
the PRM on them (`pper prm train`), under ROOT/prm, before the first arm that needs it; the report gives its cost
and quality. Only training tasks are ever labelled, as a shared buffer holds only training tasks' programs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..config import PperConfig, TasksConfig, validate_config
from ..errors import PperError
from ..generation.config import GenerationConfig

RUNNER_KEYS = ("name", "runs_dir", "seed")  # set per arm and seed by the runner


def deep_merge(base: dict, over: dict) -> dict:
    """`base` updated by `over`, recursively for mappings present in both; other values are replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class BufferRecipe(BaseModel):
    """How a shared buffer is filled. source `model`: the base model samples every training task with the
    `generation` settings given beside `source` (mode, k, temperature, ...; the rest from `common`), and
    every program is tested. source `references`: the training tasks' reference solutions, tested."""

    model_config = ConfigDict(extra="allow")

    source: Literal["model", "references"] = "model"

    @model_validator(mode="after")
    def _generation_keys(self) -> BufferRecipe:
        extra = sorted(self.model_extra or {})
        known = GenerationConfig.model_fields
        unknown = [k for k in extra if k not in known]
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r} (a recipe takes source and generation keys: {', '.join(known)})"
            )
        if extra and self.source != "model":
            raise ValueError(f"a {self.source} buffer is not sampled: drop {', '.join(extra)}")
        return self

    @property
    def generation(self) -> dict[str, Any]:
        """The generation settings of a `model` buffer."""
        return dict(self.model_extra or {})


class PrmRecipe(BaseModel):
    """How the protocol's PRM is made: the programs of the shared buffer `buffer` (a name, or a list of names whose
    programs are labelled together: `[beam, references]` adds the references, every line of which is good, to the
    model's programs) are labelled and a PRM trained on their labels, with the `prm` settings given beside `buffer`
    (completer, completions, steps, ...; the rest from `common`'s `prm` section)."""

    model_config = ConfigDict(extra="allow")

    buffer: str | list[str]

    @property
    def buffers(self) -> list[str]:
        """The shared buffers whose programs are labelled, the first giving the labelling run's generation."""
        return [self.buffer] if isinstance(self.buffer, str) else list(self.buffer)

    @model_validator(mode="after")
    def _prm_keys(self) -> PrmRecipe:
        from ..prm.config import PrmConfig

        known = [k for k in PrmConfig.model_fields if k != "model"]
        unknown = [k for k in self.model_extra or {} if k not in known]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (the PRM recipe takes buffer and: {', '.join(known)})")
        return self

    @property
    def settings(self) -> dict[str, Any]:
        """The recipe's `prm` settings."""
        return dict(self.model_extra or {})


def uses_prm(config: PperConfig) -> str | None:
    """The option through which a configuration uses a PRM, if it does."""
    if config.replay.prm_weight > 0:
        return "replay.prm_weight"
    if getattr(config.generation, "rerank", "none") == "prm":
        return "generation.rerank"
    if getattr(config.rl, "prm_weight", 0) > 0:
        return "rl.prm_weight"
    return None


class ArmSpec(BaseModel):
    """One arm of a protocol: its kind, the buffer it starts from, its seeds, and its overrides of `common`."""

    model_config = ConfigDict(extra="allow")

    kind: str = "replay"
    buffer: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    budget_from: str | None = None  # kinds with a wall-clock budget (grpo): the arm whose time sets it

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _known(self) -> ArmSpec:
        from .arms import KINDS

        if self.kind not in KINDS:
            raise ValueError(f"unknown arm kind {self.kind!r} (known kinds: {', '.join(KINDS)})")
        if self.budget_from is not None and not KINDS[self.kind].wall_clock:
            raise ValueError(f"`budget_from` is for arms with a wall-clock budget (grpo), not kind {self.kind!r}")
        for key in self.model_extra or {}:
            if key == "train":
                raise ValueError("`train: false` is now `kind: base`")
            if key in RUNNER_KEYS:
                raise ValueError(f"{key!r} is set by the runner for every arm and seed")
            if key not in PperConfig.model_fields:
                raise ValueError(
                    f"unknown key {key!r} (an arm takes kind, buffer, seeds and sections of a pper config: "
                    f"{', '.join(k for k in PperConfig.model_fields if k not in RUNNER_KEYS)})"
                )
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        """The arm's own overrides of the common configuration."""
        return dict(self.model_extra or {})


class Protocol(BaseModel):
    """A whole protocol, validated: every arm's configuration for every seed is built once here, so a
    mistake is reported before anything runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    runs_dir: Path = Path("runs/experiments")
    common: dict[str, Any] = {}
    buffers: dict[str, BufferRecipe] = {}
    arms: dict[str, ArmSpec]
    compare: list[tuple[str, str]] = []
    alpha_sweep: list[str] = []
    prm: PrmRecipe | None = None
    _source: str = PrivateAttr("protocol")

    @model_validator(mode="after")
    def _consistent(self) -> Protocol:
        from .arms import KINDS

        bases = [n for n, a in self.arms.items() if not KINDS[a.kind].trains]
        if len(bases) != 1:
            raise ValueError(f"a protocol needs exactly one arm of kind base (the model before training), got {bases}")
        for name, arm in self.arms.items():
            KINDS[arm.kind].check(self, name, arm)
        for a, b in self.compare:
            for arm in (a, b):
                if arm not in self.arms:
                    raise ValueError(f"compare [{a}, {b}]: no arm named {arm!r}")
        for name in self.prm.buffers if self.prm is not None else []:
            if name not in self.buffers and name != "references":
                raise ValueError(f"prm.buffer: no buffer named {name!r} (buffers: {', '.join(self.buffers)})")
        if self.prm is not None and not self.prm.buffers:
            raise ValueError("prm.buffer: name at least one shared buffer")
        for name in self.alpha_sweep:
            if name not in self.arms:
                raise ValueError(f"alpha_sweep: no arm named {name!r}")
            if "alpha" not in (self.arms[name].overrides.get("replay") or {}):
                raise ValueError(f"alpha_sweep: arm {name!r} sets no replay.alpha")
        return self

    @property
    def root(self) -> Path:
        """The directory of the protocol's runs, buffers, ledger and results."""
        return self.runs_dir / self.name

    @property
    def source(self) -> str:
        """The file the protocol was read from."""
        return self._source

    def base_arm(self) -> str:
        from .arms import KINDS

        return next(n for n, a in self.arms.items() if not KINDS[a.kind].trains)

    def recipe(self, buffer: str) -> BufferRecipe:
        """A named buffer's recipe; `references` needs no entry under `buffers`."""
        if buffer in self.buffers:
            return self.buffers[buffer]
        if buffer == "references":
            return BufferRecipe(source="references")
        raise PperError(f"protocol {self.name}: no buffer named {buffer!r} (buffers: {', '.join(self.buffers)})")

    def buffer_config(self, buffer: str) -> PperConfig:
        """The configuration a shared buffer is filled with (its run directory is ROOT/buffers/NAME)."""
        data = deep_merge(self.common, {"generation": self.recipe(buffer).generation})
        data.update(name=f"buffers/{buffer}", runs_dir=str(self.root), seed=0)
        return validate_config(no_validation(data), f"{self.source}: buffer {buffer}")

    def arm_config(self, arm: str, seed: int) -> PperConfig:
        """The configuration of one arm and seed: `common`, then what the arm's kind sets, then the arm's
        own overrides; run under ROOT/ARM/seed-SEED."""
        from .arms import KINDS

        spec = self.arms[arm]
        kind = KINDS[spec.kind]
        data = deep_merge(deep_merge(self.common, kind.overrides(self, arm, spec)), spec.overrides)
        data.update(name=f"{arm}/seed-{seed}", runs_dir=str(self.root), seed=seed)
        config = validate_config(no_validation(data, f"{self.source}: arm {arm}"), f"{self.source}: arm {arm}")
        kind.verify(f"{self.source}: arm {arm}", config)
        option = uses_prm(config)
        if option and config.prm.model is None:  # only an arm that uses a PRM gets the protocol's: the others'
            if self.prm is None:  # configurations (and so their run directories) do not change with a recipe
                raise PperError(
                    f"{self.source}: arm {arm} uses a PRM ({option}) but the protocol has no `prm` recipe "
                    "(prm: {buffer: NAME, ...}) and the arm names no prm.model"
                )
            data = deep_merge(data, {"prm": {"model": str(self.prm_model)}})
            config = validate_config(no_validation(data, f"{self.source}: arm {arm}"), f"{self.source}: arm {arm}")
        return config

    def needs_prm(self, config: PperConfig) -> bool:
        """Whether an arm's `config` uses the protocol's PRM (not one the arm names), which is made before it."""
        return self.prm is not None and uses_prm(config) is not None and config.prm.model == str(self.prm_model)

    @property
    def prm_dir(self) -> Path:
        """Where the protocol's PRM is made: labels/ (a run directory holding the labelled copy of the buffer)
        and model/ (the trained PRM)."""
        return self.root / "prm"

    @property
    def prm_model(self) -> Path:
        return self.prm_dir / "model"

    def prm_config(self) -> PperConfig:
        """The configuration of the PRM's labelling run (ROOT/prm/labels): the buffer's, with the recipe's
        `prm` settings."""
        assert self.prm is not None
        data = deep_merge(self.common, {"generation": self.recipe(self.prm.buffers[0]).generation})
        data = deep_merge(data, {"prm": self.prm.settings})
        data.update(name="prm/labels", runs_dir=str(self.root), seed=0)
        return validate_config(no_validation(data), f"{self.source}: prm")

    def comparisons(self) -> list[tuple[str, str]]:
        """Every pair of arms compared: each arm against the base model, then `compare`."""
        base = self.base_arm()
        pairs = [(n, base) for n in self.arms if n != base]
        return pairs + [p for p in self.compare if p not in pairs]

    def check_budgets(self) -> None:
        """Refuse arms compared with each other (`compare`, the alpha sweep) that train with different rounds,
        steps or batch sizes: a difference between them would measure the budget, not the method."""
        from .arms import KINDS

        pairs = list(self.compare) + list(itertools.combinations(self.alpha_sweep, 2))
        budgets = {n: KINDS[a.kind].budget(self.arm_config(n, a.seeds[0])) for n, a in self.arms.items()}
        for a, b in pairs:
            if budgets[a] is None or budgets[b] is None or budgets[a] == budgets[b]:
                continue
            show = {n: ", ".join(f"{k} {v}" for k, v in budgets[n].items()) for n in (a, b)}
            raise PperError(
                f"{self.source}: arms {a} and {b} are compared but train with different budgets "
                f"({a}: {show[a]}; {b}: {show[b]}); compared arms need equal {', '.join(budgets[a])}"
            )


def no_validation(data: dict[str, Any], origin: str = "protocol") -> dict[str, Any]:
    """`data` with `tasks.validation: 0`, so the run keeps (and the protocol reports) its last round.

    A configuration without that key (an older pper) is left as it is; a protocol asking for another
    value is refused.
    """
    if "validation" not in TasksConfig.model_fields:
        return data
    tasks = dict(data.get("tasks") or {})
    if tasks.get("validation", 0) != 0:
        raise PperError(
            f"{origin}: tasks.validation is {tasks['validation']}, but arms ship their last round "
            "(no keep-best): leave it out, the runner sets 0"
        )
    return {**data, "tasks": {**tasks, "validation": 0}}


def read_protocol(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a protocol file, with its `extends` chain merged in (the extended file first)."""
    path = Path(path)
    if path.resolve() in seen:
        raise PperError(f"{path}: `extends` loops back to itself ({' -> '.join(str(p) for p in seen)})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PperError(f"cannot read protocol {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise PperError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PperError(f"{path}: a protocol must be a mapping of keys to values")
    if "extends" in data:
        parent = path.parent / str(data.pop("extends"))
        data = deep_merge(read_protocol(parent, (*seen, path.resolve())), data)
    return data


def load_protocol(path: str | Path) -> Protocol:
    """Read, merge (`extends`) and validate a protocol file, every arm's configuration included."""
    data = read_protocol(Path(path))
    return validate_protocol(data, str(path))


def validate_protocol(data: dict[str, Any], source: str = "protocol") -> Protocol:
    """A validated `Protocol` from its mapping; errors name the key at fault."""
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg}" if key else f"  {msg}")
        raise PperError(f"{source}: invalid protocol\n" + "\n".join(lines)) from None
    protocol._source = source
    for arm, spec in protocol.arms.items():
        for seed in spec.seeds:
            protocol.arm_config(arm, seed)
    if protocol.prm is not None:
        protocol.prm_config()  # the recipe's values too, now rather than once its buffer is filled
    protocol.check_budgets()
    return protocol
