"""Tasks: the `Task` model, its three kinds of tests and the loaders of every task source."""

from .holdout import holdout_split
from .model import (
    TEST_KINDS,
    AssertTests,
    CallCase,
    CallTests,
    StdioCase,
    StdioTests,
    Task,
    TestSuite,
    tests_from_dict,
)
from .sources import SOURCE_HELP, detect_format, load_tasks, select_split

__all__ = [
    "TEST_KINDS",
    "AssertTests",
    "CallCase",
    "CallTests",
    "StdioCase",
    "StdioTests",
    "Task",
    "TestSuite",
    "tests_from_dict",
    "holdout_split",
    "SOURCE_HELP",
    "detect_format",
    "load_tasks",
    "select_split",
]
