"""The replay buffer: SQLite store (versioned schema), P2Value, prioritized sampling, importance weights, export.

Imports no torch.
"""

from .export import EXPORT_COLUMNS, export_rows, to_hf_dataset, to_jsonl
from .priority import importance_weights, p2value, possibility, priorities, ranks
from .replay import Draw, GroupReplay, Replay, ReplayConfig
from .sampler import PrioritizedSampler
from .store import (
    BUFFER_FILE,
    Execution,
    Group,
    LineSearch,
    Member,
    NewProgram,
    Program,
    Repair,
    ReplayBuffer,
    ReplayTable,
    Turn,
    program_hash,
)

__all__ = [
    "EXPORT_COLUMNS",
    "export_rows",
    "to_hf_dataset",
    "to_jsonl",
    "importance_weights",
    "p2value",
    "possibility",
    "priorities",
    "ranks",
    "Draw",
    "GroupReplay",
    "Replay",
    "ReplayConfig",
    "PrioritizedSampler",
    "BUFFER_FILE",
    "Execution",
    "Group",
    "LineSearch",
    "Member",
    "NewProgram",
    "Program",
    "Repair",
    "ReplayBuffer",
    "ReplayTable",
    "Turn",
    "program_hash",
]
