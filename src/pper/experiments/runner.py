"""Running a protocol: its units in seed-major order, a time ledger across invocations, and its status.

Every arm x seed is a unit (arms.py). The runner goes through every arm's first seed, then every arm's
second, ..., so an interrupted protocol has all its arms before it has all its seeds. Each unit and each
shared buffer skips what is done, so the same command continues an interrupted protocol. The working time
of each unit and buffer fill goes to ROOT/timings.jsonl (also when it is interrupted), so the reported
time adds up over invocations, and `status` can estimate what is left.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import PperError
from ..jsonl import append_jsonl, read_jsonl
from .arms import Unit, buffer_dir, buffer_filled, fill_buffer, make_prm, prm_trained
from .protocol import Protocol

TIMINGS = "timings.jsonl"
UNRECORDED = "unrecorded"  # the machine of a ledger row written before the ledger named machines
NOT_RUN = "not-run.txt"  # in a unit's run directory: why it could not run (a pper error, e.g. nothing to replay)


def machine() -> str:
    """The machine this process runs on, as the ledger and reports name it: CPU, cores, torch and its threads."""
    import torch

    from ..execution.calibration import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


@contextmanager
def timed(root: Path, unit: str) -> Iterator[None]:
    """Append the seconds spent on `unit` to the protocol's time ledger, also when it is interrupted, with the
    machine it ran on (torch's threads as the unit started)."""
    start = time.time()
    where = machine()
    finished = False
    try:
        yield
        finished = True
    finally:
        seconds = time.time() - start
        if seconds > 1 or not finished:  # a unit found already done costs nothing worth logging
            row = {"unit": unit, "seconds": round(seconds, 1), "finished": finished, "time": start, "machine": where}
            root.mkdir(parents=True, exist_ok=True)
            append_jsonl(root / TIMINGS, [row])


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """While it lasts, SIGTERM raises SystemExit(143) (in the main thread), so a `kill` still logs the
    interrupted unit's time in the ledger; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ledger(root: Path) -> list[dict]:
    """The rows of the protocol's time ledger (none before its first unit)."""
    return read_jsonl(root / TIMINGS)


def _seconds_by(rows: list[dict], key: Callable[[dict], str]) -> dict[str, float]:
    """The ledger rows' seconds summed per `key(row)`, in the order the keys first appear."""
    out: dict[str, float] = {}
    for r in rows:
        out[key(r)] = out.get(key(r), 0.0) + float(r["seconds"])
    return out


def machines(rows: list[dict]) -> dict[str, float]:
    """Seconds per machine the ledger's rows ran on (`UNRECORDED`: rows written before the ledger named machines),
    the machine with the most first."""
    out = _seconds_by(rows, lambda r: r.get("machine") or UNRECORDED)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def spent(rows: list[dict]) -> dict[str, float]:
    """Seconds per ledger unit, summed over its attempts."""
    return _seconds_by(rows, lambda r: r["unit"])


def units(protocol: Protocol, only: Sequence[str] = ()) -> list[Unit]:
    """The protocol's units, seed-major; with `only`, just those arms (and the base model, which every
    comparison needs)."""
    unknown = [a for a in only if a not in protocol.arms]
    if unknown:
        raise PperError(f"--only: no arm named {unknown[0]!r} in {protocol.source} (arms: {', '.join(protocol.arms)})")
    base = protocol.base_arm()
    chosen = [a for a in protocol.arms if not only or a in only or a == base]
    indexed = [(i, Unit(protocol, a, s)) for a in chosen for i, s in enumerate(protocol.arms[a].seeds)]
    return [u for _, u in sorted(indexed, key=lambda x: x[0])]


def not_run(unit: Unit) -> str | None:
    """Why the unit could not run, if it could not (the reason its last attempt gave)."""
    path = unit.run_dir / NOT_RUN
    return path.read_text() if path.exists() else None


def run_unit(unit: Unit, echo: Callable[[str], None] = print) -> bool:
    """Fill the unit's shared buffer if needed (and make the protocol's PRM if the unit uses it), then prepare and
    run the unit; whether it is done. A pper error (e.g. a pass-rate filter that leaves nothing to replay, a PRM
    whose buffer has nothing to label) is recorded in the run directory as the reason the unit did not run, and
    tried again on the next invocation."""
    root = unit.protocol.root
    if unit.done():
        return True
    marker = unit.run_dir / NOT_RUN
    buffer = unit.kind.buffer(unit.spec)
    if buffer is not None and not buffer_filled(unit.protocol, buffer):
        echo(f"== buffer {buffer}")
        with timed(root, f"buffer {buffer}"):
            fill_buffer(unit.protocol, buffer)
    try:
        if unit.protocol.needs_prm(unit.config) and not prm_trained(unit.protocol):
            for source in unit.protocol.prm.buffers:
                if not buffer_filled(unit.protocol, source):
                    echo(f"== buffer {source}")
                    with timed(root, f"buffer {source}"):
                        fill_buffer(unit.protocol, source)
            echo("== prm")
            with timed(root, "prm"):  # a PRM that cannot be made leaves this unit not run, not the others
                make_prm(unit.protocol)
        echo(f"== {unit.label}")
        with timed(root, unit.label):
            unit.kind.prepare(unit)
            unit.kind.execute(unit)
    except PperError as e:
        echo(f"   {unit.label} not run: {e}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(e))
        return False
    marker.unlink(missing_ok=True)
    return unit.done()


@dataclass(frozen=True)
class UnitStatus:
    """Where one unit (or shared buffer) stands: done, not run, partial or not started; the seconds the
    ledger has for it, and an estimate of the seconds left (None where nothing finished gives a basis)."""

    unit: str
    state: str
    seconds: float
    remaining: float | None


def status(protocol: Protocol) -> list[UnitStatus]:
    """Every shared buffer and unit of the protocol, in the order the runner takes them.

    Estimates: a unit not done is expected to take what the finished units of its arm took on average (else
    those of its kind, else any that train as it does or not; a buffer, the other filled buffers of its
    source), less what it has spent already.
    """
    root = protocol.root
    seconds = spent(ledger(root))
    all_units = units(protocol)
    buffers = list(dict.fromkeys(b for u in all_units if (b := u.kind.buffer(u.spec)) is not None))
    out: list[UnitStatus] = []

    def mean(labels: list[str]) -> float | None:
        known = [seconds[x] for x in labels if x in seconds]
        return sum(known) / len(known) if known else None

    filled = {b: buffer_filled(protocol, b) for b in buffers}
    for b in buffers:
        label = f"buffer {b}"
        if filled[b]:
            out.append(UnitStatus(label, "done", seconds.get(label, 0.0), 0.0))
            continue
        source = protocol.recipe(b).source
        estimate = mean([f"buffer {o}" for o in buffers if filled[o] and protocol.recipe(o).source == source])
        state = "partial" if buffer_dir(protocol, b).exists() else "not started"
        out.append(UnitStatus(label, state, seconds.get(label, 0.0), _left(estimate, seconds.get(label, 0.0))))
    if any(protocol.needs_prm(u.config) for u in all_units):
        have = seconds.get("prm", 0.0)
        state = "done" if prm_trained(protocol) else "partial" if protocol.prm_dir.exists() else "not started"
        out.append(UnitStatus("prm", state, have, 0.0 if state == "done" else None))
    done = {u.label: u.done() for u in all_units}
    for u in all_units:
        have = seconds.get(u.label, 0.0)
        if done[u.label]:
            out.append(UnitStatus(u.label, "done", have, 0.0))
            continue
        estimate = mean([v.label for v in all_units if v.arm == u.arm and done[v.label]])
        if estimate is None:
            estimate = mean([v.label for v in all_units if v.spec.kind == u.spec.kind and done[v.label]])
        if estimate is None:
            estimate = mean([v.label for v in all_units if v.kind.trains == u.kind.trains and done[v.label]])
        state = "not run" if not_run(u) else "partial" if u.run_dir.exists() else "not started"
        out.append(UnitStatus(u.label, state, have, _left(estimate, have)))
    return out


def _left(estimate: float | None, have: float) -> float | None:
    return None if estimate is None else max(estimate - have, 0.0)


def run_protocol(
    protocol: Protocol,
    only: Sequence[str] = (),
    report_only: bool = False,
    publish: Path | None = None,
    echo: Callable[[str], None] = print,
) -> str:
    """Run (or resume) the protocol's units, then summarise every finished one; the results as markdown.

    Writes ROOT/results.json, results.md and alpha.png (report.py); with `publish`, also puts the
    results between the protocol's markers in that document.
    """
    from .report import publish as publish_results
    from .report import summarize, write_results

    protocol.root.mkdir(parents=True, exist_ok=True)
    chosen = units(protocol, only)
    if not report_only:
        with sigterm_exits():
            for unit in chosen:
                run_unit(unit, echo)
    summary = summarize(protocol, units(protocol))  # --only limits what runs, not what is reported
    text = write_results(protocol, summary)
    if publish is not None:
        publish_results(publish, protocol, text)
    return text
