"""Configuration of the process reward model's labelling (`prm` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PrmConfig(BaseModel):
    """completer: what completes a prefix in a probe: "reference" (the task's reference where the prefix equals
    its first lines), "model" (`completions` samples of the prefix from the model at `generation.temperature`),
    "reference+model" (the reference first, then the model), or "auto" (reference+model where the task has a
    reference, else model). max_programs / max_probes: a budget for one `pper prm label` (None: no bound)."""

    model_config = ConfigDict(extra="forbid")

    completer: Literal["auto", "reference", "model", "reference+model"] = "auto"
    completions: int = Field(4, ge=1)
    max_programs: int | None = Field(None, ge=1)
    max_probes: int | None = Field(None, ge=1)
