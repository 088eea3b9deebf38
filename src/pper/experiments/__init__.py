"""Experiment protocols: arms compared on held-out tasks with paired bootstrap intervals (`pper experiment`).

A protocol (protocol.py) names arms (arms.py: `base`, `replay`, `references-sft`, ...), the buffers they
share and the comparisons to report; the runner (runner.py) runs every arm x seed as an ordinary resumable
`pper run`, and report.py turns the finished ones into tables, a plot and a published block of a document.
"""

from .archive import Archived, archive, restore
from .arms import KINDS, ArmKind, Unit, kind
from .protocol import ArmSpec, BufferRecipe, Protocol, load_protocol, validate_protocol
from .runner import UnitStatus, run_protocol, status, units

__all__ = [
    "Archived",
    "archive",
    "restore",
    "KINDS",
    "ArmKind",
    "Unit",
    "kind",
    "ArmSpec",
    "BufferRecipe",
    "Protocol",
    "load_protocol",
    "validate_protocol",
    "UnitStatus",
    "run_protocol",
    "status",
    "units",
]
