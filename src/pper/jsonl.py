"""Append-only JSON Lines files that survive a killed writer: each append is one `write` of whole lines,
and a reader drops (and truncates away) a last line left unfinished."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import PperError


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete rows of `path` ([] if it does not exist); an unfinished last line is removed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    rows = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise PperError(f"{path}: line {number} is not JSON; delete the file to redo what it recorded") from None
    return rows


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append `rows` with one write and flush them to disk."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:  # a regular file takes it all in one write unless the disk is full
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
