"""The replay buffer: SQLite store, P2Value, prioritized sampling (sum tree, rank-based), export.

Imports no torch.
"""

from .export import EXPORT_COLUMNS, export_rows, to_hf_dataset, to_jsonl
from .priority import importance_weights, p2value, possibility, priorities, ranks
from .replay import Draw, Replay, ReplayConfig
from .sampler import PrioritizedSampler
from .store import BUFFER_FILE, Execution, NewProgram, Program, ReplayBuffer, ReplayTable, program_hash
from .sum_tree import SumTree

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
    "Replay",
    "ReplayConfig",
    "PrioritizedSampler",
    "BUFFER_FILE",
    "Execution",
    "NewProgram",
    "Program",
    "ReplayBuffer",
    "ReplayTable",
    "program_hash",
    "SumTree",
]
