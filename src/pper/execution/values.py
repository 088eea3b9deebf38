"""Plain data that crosses the sandbox boundary.

A program's results are encoded inside the sandbox into JSON that holds only plain values (None, bool,
int, float, str, bytes, complex, list, tuple, dict, set, frozenset) and decoded outside it. Instances of
subclasses of these types (Counter, OrderedDict, defaultdict, namedtuple, ...) cross as a copy of their
builtin base type, and numpy scalars as Python numbers, so they compare as they would in plain Python;
whatever `__eq__` a subclass defines stays behind. Objects of any other type cannot cross, so an object
whose `__eq__` always returns True can never make a comparison done outside the sandbox succeed.
"""

from __future__ import annotations

import json
from typing import Any

# Name lookups in this module use a snapshot of the builtins taken at import, before any program runs:
# a program that patches `builtins` cannot change how results are encoded and reported.
__builtins__ = dict(__import__("builtins").__dict__)

MAX_DEPTH = 100
MAX_ITEMS = 1_000_000
_PLAIN = (type(None), bool, int, float, str)
_BASES = (int, float, str, bytes, complex, list, tuple, dict, set, frozenset)


class Unencodable(TypeError):
    """A value that is not plain data."""


class TooLarge(ValueError):
    """A value with more than MAX_ITEMS parts."""


def encode(value: Any) -> Any:
    """`value` as JSON-able data, tagging what JSON lacks: {"t": tuple}, {"s": set}, {"f": frozenset},
    {"d": [[key, value], ...]}, {"b": bytes as hex}, {"c": [real, imag]}."""
    budget = [MAX_ITEMS]
    return _encode(value, 0, budget)


def _encode(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise TooLarge(f"a result with more than {MAX_ITEMS} values")
    if depth > MAX_DEPTH:
        raise Unencodable(f"a value nested more than {MAX_DEPTH} levels deep")
    t = type(value)
    if t in _PLAIN:
        return value
    d = depth + 1
    if t is list:
        return [_encode(v, d, budget) for v in value]
    if t is tuple:
        return {"t": [_encode(v, d, budget) for v in value]}
    if t is dict:
        return {"d": [[_encode(k, d, budget), _encode(v, d, budget)] for k, v in value.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [_encode(v, d, budget) for v in value]}
    if t is bytes:
        return {"b": value.hex()}
    if t is complex:
        return {"c": [value.real, value.imag]}
    for base in _BASES:
        if isinstance(value, base):  # a subclass: cross as a plain copy of the builtin base
            return _encode(base(value), d, budget)
    if getattr(t, "__module__", None) == "numpy" and getattr(value, "shape", None) == ():
        item = value.item()  # a numpy scalar; whatever it returns must be plain in turn
        if type(item) in _PLAIN or type(item) is complex:
            return _encode(item, d, budget)
    raise Unencodable(f"a value of type {t.__module__}.{t.__qualname__} is not plain data")


def dumps(values: list[Any]) -> str:
    return json.dumps([encode(v) for v in values], allow_nan=True)


def decode(data: Any) -> Any:
    """The inverse of `encode`; raises ValueError on data `encode` cannot produce."""
    t = type(data)
    if t in _PLAIN:
        return data
    if t is list:
        return [decode(v) for v in data]
    if t is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag == "t":
            return tuple(decode(v) for v in body)
        if tag == "d":
            return {decode(k): decode(v) for k, v in body}
        if tag == "s":
            return {decode(v) for v in body}
        if tag == "f":
            return frozenset(decode(v) for v in body)
        if tag == "b":
            return bytes.fromhex(body)
        if tag == "c":
            return complex(*body)
    raise ValueError(f"not encoded plain data: {str(data)[:80]}")


def loads(text: str) -> list[Any]:
    data = json.loads(text)
    if type(data) is not list:
        raise ValueError("encoded values must be a list")
    return [decode(v) for v in data]
