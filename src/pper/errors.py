"""Errors users see: each says what is wrong and what to do about it."""

from __future__ import annotations


class PperError(Exception):
    """Base class of pper's user-facing errors; the CLI prints them without a traceback."""


class DataFormatError(PperError, ValueError):
    """A row of an input file does not have the expected format.

    The message names the file, where in it ("line 12", or "row 3" for Parquet) and the field.
    """

    def __init__(self, path: str, where: str | None, field: str | None, problem: str):
        self.path, self.where, self.field, self.problem = path, where, field, problem
        place = str(path) + (f", {where}" if where else "")
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{place}: {what}{problem}")
