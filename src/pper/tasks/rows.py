"""Reading rows from task files, with errors that name the file, the line and the field."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DataFormatError, PperError

T = TypeVar("T")

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", bool: "a boolean"}


class RowError(ValueError):
    """A field of one row is missing or has the wrong type; the reader adds the file and line."""

    def __init__(self, field: str | None, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}" if field else problem)


def need(row: dict[str, Any], key: str, kind: type[T], prefix: str = "") -> T:
    """`row[key]`, which must exist and be of type `kind`."""
    name = f"{prefix}.{key}" if prefix else key
    if key not in row or row[key] is None:
        raise RowError(name, "missing")
    return _typed(row[key], kind, name)


def optional(row: dict[str, Any], key: str, kind: type[T], prefix: str = "") -> T | None:
    """`row[key]` if present and not null (then it must be of type `kind`), else None."""
    value = row.get(key)
    if value is None:
        return None
    return _typed(value, kind, f"{prefix}.{key}" if prefix else key)


def _typed(value: Any, kind: type[T], name: str) -> T:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise RowError(name, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {type(value).__name__}")
    return value


def json_field(row: dict[str, Any], key: str) -> Any:
    """Decode a field that holds JSON text (APPS stores `solutions` and `input_output` this way)."""
    text = row.get(key)
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        return text  # already decoded (e.g. re-exported rows)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(key, f"is not valid JSON text ({e.msg} at character {e.pos})") from None


def iter_file_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) for every row of a .jsonl[.gz], .json (a list of rows) or .parquet file.

    The location is "line N" for JSON Lines and "row N" otherwise (both 1-based).
    """
    path = Path(path)
    if not path.exists():
        raise PperError(f"{path}: no such file")
    if path.is_dir():
        raise PperError(f"{path}: is a directory; give a .jsonl, .json or .parquet file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif name.endswith(".json"):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataFormatError(str(path), f"line {e.lineno}", None, f"invalid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DataFormatError(str(path), None, None, "a .json task file must hold a list of rows")
        for i, row in enumerate(rows, 1):
            yield f"row {i}", _as_row(row, path, f"row {i}")
    else:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    problem = f"invalid JSON ({e.msg} at column {e.colno})"
                    raise DataFormatError(str(path), f"line {i}", None, problem) from None
                yield f"line {i}", _as_row(row, path, f"line {i}")


def _as_row(row: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataFormatError(str(path), where, None, f"a row must be a JSON object, got {type(row).__name__}")
    return row


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise PperError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"row {i}", row


def parse_rows(
    rows: Iterator[tuple[str, dict[str, Any]]], parse: Callable[[dict[str, Any]], T | None], origin: str
) -> list[T]:
    """Parse every row; a bad row raises `DataFormatError` naming `origin`, its location and field.

    Nothing is returned unless every row parses, so a bad file is never half-loaded.
    """
    out = []
    for where, row in rows:
        try:
            item = parse(row)
        except RowError as e:
            raise DataFormatError(origin, where, e.field, e.problem) from None
        if item is not None:
            out.append(item)
    return out
