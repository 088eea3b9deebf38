"""How tests/data/buffer-v1.sqlite.gz was made: a replay buffer written by pper at schema version 1.

Run with pper's code at commit adf93d0 (the last release writing schema 1), never with later code:

    mkdir /tmp/pper-v1 && git archive adf93d0 src | tar -x -C /tmp/pper-v1
    PYTHONPATH=/tmp/pper-v1/src python tests/data/make_buffer_v1.py ../shared/data/mbpp.jsonl

It holds 3 MBPP tasks and 2 APPS tasks, 7 programs from two models and rounds (one untested), 6 executions
(passing, failing with an error text, a timeout) and two sampling records. The test of the schema migration
(tests/test_buffer_migration.py) pins these contents.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path

from pper.buffer import Execution, NewProgram, ReplayBuffer
from pper.buffer.store import SCHEMA_VERSION
from pper.tasks import load_tasks

HERE = Path(__file__).parent


def main(mbpp: str) -> None:
    assert SCHEMA_VERSION == 1, "run this with pper's code at schema version 1 (see the docstring)"
    tasks = load_tasks(f"mbpp:{mbpp}", limit=3) + load_tasks(f"apps:{HERE.parent / 'fixtures/apps_sample.jsonl'}")[:2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.sqlite"
        with ReplayBuffer(path) as b:
            b.add_tasks(tasks)
            m1, m2, a1 = tasks[0].id, tasks[1].id, tasks[3].id
            ids = b.add_sampled(
                m1,
                "smollm2",
                0,
                [
                    NewProgram(m1, tasks[0].solutions[0], -3.5, 40, "smollm2"),
                    NewProgram(m1, "def min_cost(cost, m, n):\n    return 0\n", -7.25, 16, "smollm2"),
                    NewProgram(m1, "def min_cost(cost, m, n):\n    while True: pass\n", -9.0, 18, "smollm2"),
                ],
            )
            ids += b.add_sampled(m2, "smollm2", 0, [NewProgram(m2, tasks[1].solutions[0], -2.0, 25, "smollm2")])
            ids += b.add_programs(
                [
                    NewProgram(a1, "print(input())\n", -4.5, 6, "teacher", 1),
                    NewProgram(
                        a1, "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n", -6.0, 20, "teacher", 1
                    ),
                    NewProgram(tasks[2].id, "def similar_elements(a, b):\n    return ()\n", -5.0, 15, "smollm2", 1),
                ]
            )
            b.add_executions(
                [
                    Execution(ids[0], ("passed",) * 3, 3, None, 0.031),
                    Execution(ids[1], ("wrong_answer",) * 3, 0, "AssertionError: assert 0 == 8", 0.027),
                    Execution(ids[2], ("timeout",) * 3, 0, "time limit exceeded (4 s)", 12.0),
                    Execution(ids[3], ("passed", "passed", "wrong_answer"), 2, "AssertionError", 0.02),
                    Execution(ids[4], ("wrong_answer", "passed"), 1, "expected '3', got '1 2'", 0.05),
                ]
            )
            b.add_executions([Execution(ids[5], ("passed", "passed"), 2, None, 0.04)])  # ids[6] stays untested
        data = path.read_bytes()
    (HERE / "buffer-v1.sqlite.gz").write_bytes(gzip.compress(data, mtime=0))
    print(f"{len(data)} bytes, {len(gzip.compress(data, mtime=0))} compressed")


if __name__ == "__main__":
    main(sys.argv[1])
