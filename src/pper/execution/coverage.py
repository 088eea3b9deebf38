"""Line coverage: which lines of a program ran while its tests ran.

Inside the sandbox, `LineTracer` (a `sys.settrace` function) records the line events of the program's own code
(code objects compiled from "<program>"): the tests, the harness and every library are never traced. Its cost
is bounded: a code object stops being traced in a test once every line it has was seen, and after
`MAX_EVENTS` trace events in one test (calls into any Python code and lines) tracing stops for the rest of that
test and its coverage is marked partial. The harness's own work between the program's calls (copying
arguments, encoding results) runs untraced (`pause`/`resume`). The server gives each test `ALLOWANCE` more
seconds when coverage is on, more than that bound costs, so coverage changes no verdict.

Measured cost (`bench/execution.py`, 328 HumanEval programs, 2 cores): 1.4-1.6x the test phase's time without
coverage. Most of it is CPython 3.11's `sys.settrace` itself: every Python call while a test runs calls the
trace function, and a hot loop with a line that never runs keeps its code object traced until `MAX_EVENTS`
(HumanEval/75's reference alone adds about 0.16 s). Python 3.12's `sys.monitoring`, which can switch off a
line's events once it has been seen, would remove most of it.

A line tracer reports the first line of a statement (and some lines of a multi-line expression), never a
`try:` or `else:` line, a docstring or a comment. `executed_lines` completes the reported lines into the lines
of the statements that ran:

* a simple statement ran when one of its lines was reported; all of its lines ran;
* a compound statement (def, class, if, for, while, with, try, match) ran when its header line was reported or
  a statement of one of its blocks ran; its header lines ran (decorators included), and a def's or class's
  docstring with them (the docstring is evaluated when the `def` runs);
* a clause (`else:`, `finally:`, `except ...:`, `case ...:`) ran when a statement of its block ran;
* a statement that compiles to no instruction (`global`, `nonlocal`, an annotation without a value, a lone
  constant) ran when a statement of its block ran;
* comment and blank lines never run.

Line numbers are 1-based lines of the program text. The harness is untrusted: `clean_lines` keeps only line
numbers the program has. Not recorded: lines run in threads the program starts, and anything after a program
calls `sys.settrace` itself (its own loss, under FGO, is all it can change). Known limit: the trace function's own
frames use a few of the recursion depth a program has, so a program that recurses to within about 3 frames of
the interpreter's limit may fail a test with coverage that it passes without.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections.abc import Iterable
from typing import Any

from ..source import line_starts

PROGRAM_FILE = "<program>"  # the file name the program is compiled under (harness.compile_program)
MAX_EVENTS = 20_000  # trace events per test before tracing stops for that test (about 10 ms of tracing)
ALLOWANCE = 0.5  # seconds added to each test's wall time (and CPU time) when coverage is on

_BLOCKS = ("body", "handlers", "cases", "orelse", "finalbody")  # in the order of the source


class LineTracer:
    """Records the program's line events, per test. `start()` begins a test (and load); `stop()` ends it and
    returns (sorted lines that ran, complete): complete is False when `MAX_EVENTS` cut the test's tracing short.
    """

    def __init__(self, filename: str = PROGRAM_FILE, max_events: int = MAX_EVENTS):
        self.filename, self.max_events = filename, max_events
        self.lines: set[int] = set()
        self.left: dict[Any, set[int]] = {}  # code object -> its lines not yet seen in this test
        self.events = 0
        self.cut = False

    def start(self) -> None:
        self.lines, self.left, self.events, self.cut = set(), {}, 0, False
        sys.settrace(self._call)

    def stop(self) -> tuple[list[int], bool]:
        sys.settrace(None)
        return sorted(self.lines), not self.cut

    def pause(self) -> None:
        """No new call is traced until `resume` (for the harness's own work between the program's calls)."""
        sys.settrace(None)

    def resume(self) -> None:
        if not self.cut:
            sys.settrace(self._call)

    def _call(self, frame: Any, event: str, arg: Any) -> Any:
        self.events += 1
        if self.events > self.max_events:
            self._cut()
            return None
        code = frame.f_code
        if code.co_filename != self.filename:
            return None
        left = self.left.get(code)
        if left is None:
            left = self.left[code] = _line_numbers(code)
        return self._line if left else None

    def _line(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "line":
            return self._line
        self.events += 1
        if self.events > self.max_events:
            self._cut()
            frame.f_trace_lines = False
            return self._line
        line = frame.f_lineno
        self.lines.add(line)
        left = self.left.get(frame.f_code)
        if left is not None:
            left.discard(line)
            if not left:  # every line of this code object seen: the rest of this call runs untraced
                frame.f_trace_lines = False
        return self._line

    def _cut(self) -> None:
        if not self.cut:
            self.cut = True
            sys.settrace(None)


def _line_numbers(code: Any) -> set[int]:
    """The lines of `code` that can report a line event (not the `def` line of a function's own code)."""
    lines = {line for _, _, line in code.co_lines() if line is not None}
    if code.co_name != "<module>":
        lines.discard(code.co_firstlineno)
    return lines


def clean_lines(value: Any, num_lines: int) -> tuple[int, ...]:
    """The line numbers in `value` (untrusted: reported from inside the sandbox) that are lines 1..num_lines
    of the program, sorted and unique; anything else is dropped."""
    if not isinstance(value, list):
        return ()
    return tuple(sorted({v for v in value if type(v) is int and 1 <= v <= num_lines}))


def executed_lines(program: str, reported: Iterable[int]) -> tuple[int, ...]:
    """The lines of `program` that ran, given the lines a line tracer reported (see the module docstring)."""
    return ProgramLines(program).executed(reported)


class ProgramLines:
    """A program parsed once, to complete several sets of reported lines (a program's tests) cheaply."""

    def __init__(self, program: str):
        try:
            self.tree: ast.Module | None = ast.parse(program)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            self.tree = None
        self.code_lines = _code_lines(program) if self.tree is not None else set()

    def executed(self, reported: Iterable[int]) -> tuple[int, ...]:
        """The lines that ran, given the lines a line tracer reported."""
        reported = set(reported)
        if not reported:
            return ()
        if self.tree is None:
            return tuple(sorted(reported))
        ran: set[int] = set()
        _block(self.tree.body, reported, self.code_lines, ran)
        return tuple(sorted(ran & self.code_lines))


def _block(stmts: list[Any], reported: set[int], code_lines: set[int], ran: set[int]) -> bool:
    """Mark the statements of a block that ran; True when any did. A statement that compiles to no instruction
    (`global`, `nonlocal`, an annotation without a value, a lone constant) is never reported: it ran when its block
    did."""
    any_ran = False
    for stmt in stmts:
        any_ran |= _statement(stmt, reported, code_lines, ran)
    silent = [stmt for stmt in stmts if _silent(stmt)]
    if any_ran:
        for stmt in silent:
            ran.update(range(stmt.lineno, stmt.end_lineno + 1))
    return any_ran


def _silent(stmt: Any) -> bool:
    """Whether a statement compiles to no instruction a line tracer could report."""
    if isinstance(stmt, (ast.Global, ast.Nonlocal)):
        return True
    if isinstance(stmt, ast.AnnAssign) and stmt.value is None and isinstance(stmt.target, ast.Name):
        return True
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def _statement(node: Any, reported: set[int], code_lines: set[int], ran: set[int]) -> bool:
    blocks = [(name, getattr(node, name)) for name in _BLOCKS if getattr(node, name, None)]
    if not blocks:  # a simple statement
        span = set(range(node.lineno, node.end_lineno + 1))
        if span & reported:
            ran |= span
            return True
        return False
    header = set(range(_first_line(node), _first_line(blocks[0][1][0]))) & code_lines
    header_ran = bool(header & reported)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        body = node.body[1:] if _is_docstring(node.body[0]) else node.body
        any_ran = _block(body, reported, code_lines, ran) if body else False
        if (header_ran or any_ran) and body is not node.body:  # the docstring goes with the header
            header |= set(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    else:
        any_ran = False
        previous_end = None
        for name, stmts in blocks:
            if name in ("handlers", "cases"):
                for clause in stmts:
                    start = _first_line(clause)
                    clause_header = set(range(start, _first_line(clause.body[0]))) & code_lines
                    clause_ran = bool(clause_header & reported)
                    clause_ran |= _block(clause.body, reported, code_lines, ran)
                    if clause_ran:
                        ran |= clause_header
                    any_ran |= clause_ran
                    previous_end = clause.body[-1].end_lineno
                continue
            block_ran = _block(stmts, reported, code_lines, ran)
            if block_ran and name != "body" and previous_end is not None:  # the `else:` / `finally:` line
                ran.update(set(range(previous_end + 1, _first_line(stmts[0]))) & code_lines)
            any_ran |= block_ran
            previous_end = stmts[-1].end_lineno
    if header_ran or any_ran:
        ran |= header
        return True
    return False


def _first_line(stmt: Any) -> int:
    """A statement's first line (its first decorator's), or a `case` clause's (its pattern's)."""
    if isinstance(stmt, ast.match_case):
        return stmt.pattern.lineno
    decorators = getattr(stmt, "decorator_list", None) or []
    return min([stmt.lineno] + [d.lineno for d in decorators])


def _is_docstring(stmt: Any) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _code_lines(program: str) -> set[int]:
    """Lines holding a token of code (not only a comment, whitespace or the continuation of a string token
    that began on an earlier line counts: a multi-line string's lines are code)."""
    lines: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    try:
        # newline=None reads \r and \r\n as \n: lines numbered as Python numbers them (pper.source)
        for tok in tokenize.generate_tokens(io.StringIO(program, newline=None).readline):
            if tok.type not in skip:
                lines.update(range(tok.start[0], tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return set(range(1, len(line_starts(program)) + 1))
    return lines
