"""A program's lines as Python numbers them (pper.source)."""

import ast
import bisect
import traceback

from pper.source import line_starts, source_lines

# "\r" and "\r\n" break lines; "\x0c" in a comment and "\u2028" in a string do not (str.splitlines breaks at both)
PROGRAM = 'a = 1\rb = "x\u2028y"  # form\x0cfeed\r\nc = a + 1\n\nraise ValueError(b)\n'


def test_line_n_is_the_line_python_calls_n():
    lines = source_lines(PROGRAM)
    assert lines == ["a = 1", 'b = "x\u2028y"  # form\x0cfeed', "c = a + 1", "", "raise ValueError(b)"]
    assert len(PROGRAM.splitlines()) == 7  # what this module is for
    for node in ast.parse(PROGRAM).body:
        assert lines[node.lineno - 1].startswith(ast.get_source_segment(PROGRAM, node)[:5])
    try:
        exec(compile(PROGRAM, "<program>", "exec"), {})
    except ValueError as error:
        (frame,) = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<program>"]
    assert lines[frame.lineno - 1] == "raise ValueError(b)"


def test_keepends_gives_the_text_back_and_line_starts_locate_characters():
    for text in (PROGRAM, "", "x", "x\n", "\n\n", "a\r\rb\r\n"):
        kept = source_lines(text, keepends=True)
        assert "".join(kept) == text and [line.rstrip("\r\n") for line in kept] == source_lines(text)
        starts = line_starts(text)
        assert starts[: len(kept)] == [sum(map(len, kept[:i])) for i in range(len(kept))]
        for i in range(len(text)):  # character i is on the line bisect finds
            line = bisect.bisect_right(starts, i)
            assert starts[line - 1] <= i < starts[line - 1] + len(kept[line - 1])
    assert source_lines("a\n\nb") == ["a", "", "b"] and source_lines("a\n") == ["a"] and source_lines("") == []
    assert line_starts("a\r\nb\rc\n") == [0, 3, 5, 7]
