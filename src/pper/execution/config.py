"""Configuration of the testing phase."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .limits import Limits


class ExecutionConfig(BaseModel):
    """workers: fork servers (default: one per core). isolation: "namespaces" (pid, mount, network;
    refuse to run without them), "none", or "auto" (namespaces where the machine allows, else warn).
    limits: per-test limits (see `Limits`)."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1)
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    limits: Limits = Limits()
