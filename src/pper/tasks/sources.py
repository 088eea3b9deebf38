"""Task sources by name: `humaneval`, `mbpp:PATH`, `apps:PATH`, `codecontests:PATH`, `jsonl:PATH`,
`hf:DATASET_ID[:CONFIG]`; `load_tasks` turns a source name into a list of tasks."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import PperError
from .apps import parse_apps
from .codecontests import parse_codecontests
from .humaneval import bundled_path, parse_humaneval
from .mbpp import parse_mbpp
from .model import Task
from .rows import RowError, iter_file_rows, parse_rows

RowParser = Callable[[dict[str, Any], "str | None"], "Task | None"]

PARSERS: dict[str, RowParser] = {
    "humaneval": lambda row, split: parse_humaneval(row),
    "mbpp": lambda row, split: parse_mbpp(row),
    "apps": parse_apps,
    "codecontests": parse_codecontests,
    "jsonl": lambda row, split: Task.from_dict(row),
}
SOURCE_HELP = "humaneval, mbpp:PATH, apps:PATH, codecontests:PATH, jsonl:PATH or hf:DATASET_ID[:CONFIG]"
_SPLIT_IN_NAME = re.compile(r"^(train|test|valid|validation)(?:[-_.].*)?$")


def load_tasks(source: str, split: str | None = None, limit: int | None = None) -> list[Task]:
    """Load the tasks of `source`, keep those of `split` (if given), then the first `limit` (if given)."""
    kind, _, arg = source.partition(":")
    if kind == "hf":
        if not arg:
            raise PperError("hf: needs a dataset id, e.g. hf:codeparrot/apps or hf:mbpp:sanitized")
        tasks, origin = _load_hf(arg, split), f"hf:{arg}"
    elif kind in PARSERS:
        if kind == "humaneval":
            path = Path(arg) if arg else bundled_path()
        elif not arg:
            raise PperError(f"{kind}: needs a file path, e.g. {kind}:data/{kind}.jsonl")
        else:
            path = Path(arg)
        tasks, origin = _load_file(path, kind), str(path)
    else:
        raise PperError(f"unknown task source {source!r}: use {SOURCE_HELP}")
    tasks = select_split(tasks, split, origin)
    return tasks if limit is None else tasks[:limit]


def select_split(tasks: list[Task], split: str | None, origin: str) -> list[Task]:
    if split is None:
        return tasks
    splits = sorted({t.split for t in tasks if t.split is not None})
    if not splits:
        raise PperError(f"{origin} has no split information, so --split {split} selects nothing; drop --split")
    chosen = [t for t in tasks if t.split == split]
    if not chosen:
        raise PperError(f"{origin} has no tasks in split {split!r}; its splits are: {', '.join(splits)}")
    return chosen


def _load_file(path: Path, kind: str) -> list[Task]:
    parse = PARSERS[kind]
    split = _split_from_name(path)
    return _parse_all(iter_file_rows(path), lambda row: parse(row, split), str(path))


def _split_from_name(path: Path) -> str | None:
    """`train.jsonl`, `test-00000-of-00001.parquet`, ... name their split, as in Hugging Face repos
    (`valid` is read as `validation`, as `datasets` does)."""
    m = _SPLIT_IN_NAME.match(path.name.lower())
    if not m:
        return None
    return "validation" if m.group(1) == "valid" else m.group(1)


def _parse_all(rows: Iterator[tuple[str, dict[str, Any]]], parse: Callable, origin: str) -> list[Task]:
    seen: set[str] = set()
    skipped: list[str] = []

    def one(row: dict[str, Any]) -> Task | None:
        task = parse(row)
        if task is None:
            skipped.append(str(row.get("problem_id", row.get("name", "?"))))
            return None
        if task.id in seen:
            raise RowError("id", f"duplicate task id {task.id!r}")
        seen.add(task.id)
        return task

    tasks = parse_rows(rows, one, origin)
    if skipped:
        shown = ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(f"{origin}: skipped {len(skipped)} rows without tests ({shown})", stacklevel=3)
    return tasks


def detect_format(columns: set[str]) -> str:
    """Which row format a table with these columns is in."""
    if {"question", "input_output"} <= columns:
        return "apps"
    if {"public_tests", "private_tests"} & columns:
        return "codecontests"
    if {"canonical_solution", "test", "entry_point"} <= columns:
        return "humaneval"
    if "test_list" in columns:
        return "mbpp"
    if {"id", "prompt", "tests"} <= columns:
        return "jsonl"
    raise PperError(
        f"cannot tell the row format from the columns {sorted(columns)}: pper reads the HumanEval, MBPP, "
        "APPS, CodeContests and pper JSONL formats (docs/tasks.md)"
    )


def _load_hf(arg: str, split: str | None) -> list[Task]:
    """Load a Hugging Face dataset (a hub id or a local dataset folder) and parse its rows."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a core dependency
        raise PperError("hf: sources need the datasets package: pip install datasets") from None
    dataset_id, _, config = arg.partition(":")
    try:
        loaded = datasets.load_dataset(dataset_id, config or None, split=split)
    except Exception as e:  # datasets raises many kinds; all mean "could not load"
        raise PperError(
            f"could not load Hugging Face dataset {dataset_id!r}"
            + (f" (config {config!r})" if config else "")
            + (f", split {split!r}" if split else "")
            + f": {type(e).__name__}: {e}"
        ) from None
    parts = {split: loaded} if split else dict(loaded)
    tasks: list[Task] = []
    for name, table in parts.items():
        parse = PARSERS[detect_format(set(table.column_names))]
        rows = ((f"split {name}, row {i}", row) for i, row in enumerate(table, 1))
        tasks += _parse_all(rows, lambda row, parse=parse, name=name: parse(row, name), f"hf:{arg}")
    return tasks
