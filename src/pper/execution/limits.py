"""Per-test resource limits of the sandbox (stdlib only: the fork server imports it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Limits applied to every test of every program.

    wall_time / cpu_time: seconds per test. Where the task's reference solution was measured (see
    `calibration`), test i may take max(wall_time, time_factor x the reference's time on it) seconds, and
    CPU time scaled the same way: wall_time is the floor, as evalplus's minimum time limit.
    load_time: seconds to import the program and run the suite's setup. memory: address space in bytes.
    max_processes: processes and threads the program may have. file_size: largest file it may write.
    output_size: bytes it may print per test. open_files: file descriptors.
    """

    __pydantic_config__ = {"extra": "forbid"}  # noqa: RUF012 - read by pydantic when validating configs

    wall_time: float = 4.0
    cpu_time: float = 4.0
    load_time: float = 10.0
    memory: int = 2048 * MiB
    max_processes: int = 16
    file_size: int = 16 * MiB
    output_size: int = 4 * MiB
    open_files: int = 64
    time_factor: float = 4.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"limit {name} must be positive, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
