"""Configuration of the process reward model's labelling (`prm` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..generation.config import TeacherConfig


class PrmConfig(BaseModel):
    """completer: what completes a prefix in a probe: "reference" (the task's reference where the prefix equals
    its first lines), "model" (`completions` samples of the prefix from the model at `generation.temperature`),
    "teacher" (`completions` samples from `teacher`, default `generation.teacher`, an OpenAI-compatible server:
    a completion task's prefix is continued by the completions endpoint, an instruction task's is asked for in
    a chat, `generation.prompts.continuation_prompt`), "reference+model" / "reference+teacher" (the reference
    first), or "auto" (reference+model where the task has a reference, else model). max_programs / max_probes: a
    budget for one `pper prm label` (None: no bound).
    Training (`pper prm train`): `method` (LoRA adapters on the policy's architecture, or every weight), `steps`
    of `batch_size` labelled programs at `learning_rate`, a resumable checkpoint every `checkpoint_every` steps
    (0: none), `validation`: the fraction of the labelled tasks held
    out (a task-level split, seeded by the run's seed) on which the ROC AUC is measured. `max_length`: the PRM's
    input in tokens (a longer one is cut from its start). `model`: the trained PRM a run uses (`replay.prm_weight`,
    `generation.rerank: prm`, `rl.prm_weight`; default RUN/prm, `pper.prm.train.prm_dir`)."""

    model_config = ConfigDict(extra="forbid")

    completer: Literal["auto", "reference", "model", "teacher", "reference+model", "reference+teacher"] = "auto"
    completions: int = Field(4, ge=1)
    max_programs: int | None = Field(None, ge=1)
    max_probes: int | None = Field(None, ge=1)
    method: Literal["lora", "full"] = "lora"
    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    checkpoint_every: int = Field(50, ge=0)
    validation: float = Field(0.25, ge=0.0, lt=1.0)
    max_length: int = Field(2048, ge=16)
    model: str | None = None
    teacher: TeacherConfig | None = None
