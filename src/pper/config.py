"""The typed configuration of a pper run, loaded from YAML with errors that name the bad key.

Each phase's section is defined next to the code it configures (TRL style) and composed here.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .buffer.replay import ReplayConfig
from .curriculum import CurriculumConfig
from .errors import PperError
from .evaluation.config import EvaluationConfig
from .execution.config import ExecutionConfig
from .generation.config import GenerationConfig
from .prm.config import PrmConfig
from .repair import FeedbackConfig
from .rl.config import RLConfig
from .training.config import TrainingConfig


class TasksConfig(BaseModel):
    """Which tasks train the model and which evaluate it.

    Without `eval_source`, a seeded `holdout` fraction of the training source is held out for evaluation;
    with it (one source or a list, each filtered by `eval_split` and cut to its first `eval_limit` tasks),
    those tasks evaluate (the held-out test metrics).

    `validation`: a seeded fraction of the *training* tasks (never a source's own validation split) set
    aside, never sampled or trained on; every round, round 0 (the base model) included, is evaluated on it,
    and the run keeps the round with the best validation pass rate (ties keep the earlier round) as
    `runs/<name>/model/`. 0 turns it off: the last round is kept.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = "humaneval"
    split: str | None = None
    limit: int | None = Field(None, ge=1)
    eval_source: str | list[str] | None = None
    eval_split: str | None = None
    eval_limit: int | None = Field(None, ge=1)
    holdout: float = Field(0.5, ge=0.0, lt=1.0)
    validation: float = Field(0.25, ge=0.0, lt=1.0)


class PperConfig(BaseModel):
    """Everything a run needs; `pper config` prints the defaults as YAML."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    runs_dir: Path = Path("runs")
    seed: int = 0
    rounds: int = Field(1, ge=1)
    tasks: TasksConfig = TasksConfig()
    generation: GenerationConfig = GenerationConfig()
    execution: ExecutionConfig = ExecutionConfig()
    replay: ReplayConfig = ReplayConfig()
    training: TrainingConfig = TrainingConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    rl: RLConfig = RLConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    prm: PrmConfig = PrmConfig()

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PperConfig:
    """The defaults, updated by a YAML file and then by `overrides` ({"replay.alpha": 0.3, ...})."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise PperError(f"cannot read config {path}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise PperError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise PperError(f"{path}: a config must be a mapping of keys to values")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_config(data, origin)


# Keys added after runs were made with the behaviour they now switch off by default: a stored run config that lacks
# one, where it mattered (the section's switch on), is read with the value that gives the behaviour its run had,
# not with today's default (`read_run_config`). Key -> (the value, the key that must be true for it to matter).
LEGACY_VALUES: dict[str, tuple[Any, str]] = {
    # prefilled completions had no stop strings before the key existed
    "curriculum.prefill_stops": (False, "curriculum.enabled"),
}


def read_run_config(path: str | Path) -> PperConfig:
    """A run directory's stored configuration (`config.yaml`), with `LEGACY_VALUES` for the keys it predates."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PperError(f"cannot read the run configuration {path}: {e}") from None
    if not isinstance(data, dict):
        raise PperError(f"{path}: a config must be a mapping of keys to values")
    for dotted, (value, switch) in LEGACY_VALUES.items():
        *parents, leaf = dotted.split(".")
        node = _section(data, parents)
        if node is not None and leaf not in node and _section(data, switch.split(".")) is True:
            node[leaf] = value
    return validate_config(data, str(path))


def _section(data: dict[str, Any], keys: list[str]) -> Any:
    """data[k1][k2]..., or None where a key is missing."""
    node: Any = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def validate_config(data: dict[str, Any], origin: str = "config") -> PperConfig:
    try:
        return PperConfig.model_validate(data)
    except ValidationError as e:
        raise PperError(f"{origin}: invalid configuration\n" + "\n".join(_explain(err) for err in e.errors())) from None


def _explain(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
        return f"  {key}: unknown key{hint}"
    return f"  {key}: {err['msg']} (got {err.get('input')!r})"


def _known_keys(loc: tuple) -> list[str]:
    model: Any = PperConfig
    for part in loc:
        model = _fields(model)[part]
    return list(_fields(model))


def _fields(model: Any) -> dict[str, Any]:
    """Field name -> type, for pydantic models and dataclasses."""
    if dataclasses.is_dataclass(model):
        return {f.name: f.type for f in dataclasses.fields(model)}
    return {name: f.annotation for name, f in model.model_fields.items()}
