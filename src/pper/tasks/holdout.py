"""Seeded split of one task list into training and held-out tasks."""

from __future__ import annotations

import random

from .model import Task


def holdout_split(tasks: list[Task], fraction: float, seed: int) -> tuple[list[Task], list[Task]]:
    """(train, held_out): a seeded random `fraction` of the tasks is held out; both keep source order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    ids = sorted(t.id for t in tasks)
    held = set(random.Random(seed).sample(ids, round(len(ids) * fraction)))
    return [t for t in tasks if t.id not in held], [t for t in tasks if t.id in held]
