"""Testing phase: run untrusted programs against their tasks' tests in a sandbox, with per-test verdicts.

Attributes load lazily, so the fork server (`pper.execution.server`) imports only what it needs.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Limits": "limits",
    "ExecutionConfig": "config",
    "RayConfig": "config",
    "Sample": "samples",
    "read_samples": "samples",
    "program_of": "samples",
    "completion_of": "samples",
    "result_row": "samples",
    "Plan": "plan",
    "build_plan": "plan",
    "BaseExecutor": "pool",
    "Executor": "pool",
    "open_executor": "pool",
    "RayExecutor": "ray_backend",
    "Job": "pool",
    "Sandbox": "pool",
    "SandboxError": "pool",
    "namespaces_available": "pool",
    "MEMORY_LIMIT": "results",
    "OUTPUT_LIMIT": "results",
    "PASSED": "results",
    "RUNTIME_ERROR": "results",
    "SYNTAX_ERROR": "results",
    "TIMEOUT": "results",
    "VERDICTS": "results",
    "WRONG_ANSWER": "results",
    "ProgramResult": "results",
    "TestResult": "results",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pper.execution' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
