from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pper.execution.pool import SANDBOX_UID

# The HumanEval programs of the agreement test live with the benches that also use them (benches never
# import tests/, so the one copy is on their side).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

# Tests never reach a hub: Hugging Face loaders run on local folders only, with a throwaway cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="pper-hf-cache-"))

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(os.environ.get("PPER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MBPP = SHARED_DATA / "mbpp.jsonl"
SANDBOX_UIDS = range(SANDBOX_UID, SANDBOX_UID + 64)  # worker i runs programs as SANDBOX_UID + i (pper as root)


@pytest.fixture
def mbpp_path() -> Path:
    if not MBPP.exists():
        pytest.skip(f"MBPP not found at {MBPP} (set PPER_SHARED_DATA to the folder holding mbpp.jsonl)")
    return MBPP


@pytest.fixture
def apps_path() -> Path:
    return FIXTURES / "apps_sample.jsonl"


@pytest.fixture
def codecontests_path() -> Path:
    return FIXTURES / "codecontests_sample.jsonl"


class Processes:
    """Processes, read from /proc. Tests that look for processes a program left behind look only at those
    of this test process (other test processes on the machine run sandboxes of the same uids), and poll."""

    @staticmethod
    def children() -> dict[int, list[int]]:
        """Parent pid -> the pids of its children, now."""
        out: dict[int, list[int]] = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.setdefault(parent, []).append(int(entry))
        return out

    def descendants(self, pid: int) -> list[int]:
        """Its children, theirs, and so on."""
        children, found, todo = self.children(), [], [pid]
        while todo:
            below = children.get(todo.pop(), [])
            found += below
            todo += below
        return found

    @staticmethod
    def uid(pid: int) -> int:
        try:
            return os.stat(f"/proc/{pid}").st_uid
        except FileNotFoundError:
            return -1

    def sandboxed(self) -> list[int]:
        """The processes of the sandbox uids (programs, when pper runs as root) under this test process."""
        return [p for p in self.descendants(os.getpid()) if self.uid(p) in SANDBOX_UIDS]

    @staticmethod
    def named(name: str) -> list[int]:
        """The processes anywhere on this machine whose name (/proc/PID/comm, 15 characters) is `name`."""
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/comm") as f:
                    found += [int(entry)] if f.read().strip() == name else []
            except OSError:
                pass
        return found

    @staticmethod
    def left(find: Callable[[], list[int]], wait: float = 20.0) -> list[int]:
        """What `find()` still returns once the processes on their way out are gone (polled for up to `wait`
        seconds: on a busy machine a killed process takes a moment to be reaped)."""
        deadline = time.monotonic() + wait
        while (found := find()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


@pytest.fixture(scope="session")
def processes() -> Processes:
    return Processes()
