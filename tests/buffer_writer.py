"""Writes batches into a replay buffer forever (until killed): used by the kill-during-write test.

Each batch of BATCH programs carries its own round number; its executions follow in a second
transaction. A consistent buffer therefore holds every round either whole or not at all.
"""

import sys

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.execution.results import ProgramResult, TestResult
from pper.tasks import AssertTests, Task

BATCH = 500
VERDICTS = ("passed", "wrong_answer", "passed", "passed")

if __name__ == "__main__":
    buffer = ReplayBuffer(sys.argv[1])
    buffer.add_tasks([Task(id="t", prompt="p", tests=AssertTests(asserts=("assert True",) * 4))])
    start = buffer.stats()["programs"] // BATCH
    print("ready", flush=True)
    for r in range(start, 10**9):
        ids = buffer.add_programs(
            NewProgram("t", f"def f():\n    return {r * BATCH + i}  # {'x' * 200}\n", -1.0 - i % 7, 10 + i % 5, "m", r)
            for i in range(BATCH)
        )
        result = ProgramResult(tuple(TestResult(v, "E" if v != "passed" else None) for v in VERDICTS), 0.01)
        buffer.add_executions(Execution(pid, result) for pid in ids)
