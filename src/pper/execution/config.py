"""Configuration of the testing phase."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .limits import Limits


class ExecutionConfig(BaseModel):
    """workers: fork servers (default: one per core). isolation: "namespaces" (pid, mount, network;
    refuse to run without them), "none", or "auto" (namespaces where the machine allows, else warn).
    limits: per-test limits (see `Limits`). calibrate: per-test time limits from each task's reference
    solution, max(limits.wall_time, limits.time_factor x its time), measured once per task set and machine
    (see `pper.execution.calibration`); false: limits.wall_time for every test."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1)
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    limits: Limits = Limits()
    calibrate: bool = True
