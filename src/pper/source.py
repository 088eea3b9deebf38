"""A program's lines as Python numbers them.

Python breaks a source text into lines at "\\r\\n", "\\r" and "\\n" only; line n (1-based: tracebacks, line
coverage, `ast` nodes) is item n - 1 of `source_lines(text)`. `str.splitlines` also breaks at "\\x0b", "\\x0c",
"\\x1c"-"\\x1e", "\\x85", "\\u2028" and "\\u2029", which Python reads inside a line (in a string or a comment, or as
whitespace), so a program holding one of them is numbered differently, and rebuilt wrongly from its parts, by
`splitlines`. Like `splitlines`, a final line break ends the last line rather than starting an empty one.
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"\r\n|\r|\n")


def source_lines(text: str, keepends: bool = False) -> list[str]:
    """The lines of `text`, line n at index n - 1, with their line breaks when `keepends`
    ("".join(source_lines(text, True)) == text)."""
    lines: list[str] = []
    at = 0
    for brk in _BREAK.finditer(text):
        lines.append(text[at : brk.end() if keepends else brk.start()])
        at = brk.end()
    if at < len(text):
        lines.append(text[at:])
    return lines


def line_starts(text: str) -> list[int]:
    """Where each line of `text` begins: offset 0, then the offset after each line break (the last one is
    len(text) when `text` ends with a line break). The 1-based line of character i is
    bisect.bisect_right(line_starts(text), i)."""
    return [0] + [brk.end() for brk in _BREAK.finditer(text)]
