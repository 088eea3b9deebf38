"""Configuration of the testing phase."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .limits import Limits


class RayConfig(BaseModel):
    """The Ray back-end (`execution.backend: ray`; `pper.execution.ray_backend`).

    address: the cluster to join (None: start a Ray instance on this machine; "auto": the cluster this
    machine belongs to; or "host:port" / "ray://host:port"). actors_per_node: sandbox pools on each node
    with CPUs. workers: sandboxes in each pool (default: the node's CPUs divided by its actors). batch: the
    programs sent to a pool in one request; each pool holds two requests at a time. max_tries: how many times
    a program is sent alone to a pool that then failed (the programs of a failed request are sent again one at
    a time) before it gets `runtime_error`."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    actors_per_node: int = Field(1, ge=1)
    workers: int | None = Field(None, ge=1)
    batch: int = Field(16, ge=1)
    max_tries: int = Field(3, ge=1)


class ExecutionConfig(BaseModel):
    """workers: fork servers (default: one per core). isolation: "namespaces" (pid, mount, network;
    refuse to run without them), "none", or "auto" (namespaces where the machine allows, else warn).
    limits: per-test limits (see `Limits`). calibrate: per-test time limits from each task's reference
    solution, max(limits.wall_time, limits.time_factor x its time), measured once per task set and machine
    (see `pper.execution.calibration`); false: limits.wall_time for every test. backend: "local" (the pool on
    this machine) or "ray" (a pool on every node of a Ray cluster, configured by `ray`; `workers` is then
    unused)."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(None, ge=1)
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    limits: Limits = Limits()
    calibrate: bool = True
    backend: Literal["local", "ray"] = "local"
    ray: RayConfig = RayConfig()
