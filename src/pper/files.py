"""Files written atomically: the whole new content appears under the name at once, or nothing changes.

A killed writer leaves the old file (or none) and, at most, a stray `NAME.tmp` beside it that the next
write replaces. This is the one place pper writes a whole file; append-only logs are in `jsonl.py`. Directories
(checkpoints) are replaced and removed with renames only, the same way (`replace_dir`, `restore_dir`,
`remove_dir`).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` (text "w" or binary "wb"); on a clean exit it is flushed to
    disk and renamed over `path`; on an exception it is removed and `path` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    f = open(tmp, mode, encoding="utf-8" if mode == "w" else None)  # noqa: SIM115 (closed below)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace the content of `path` by `data` atomically."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def replace_dir(staging: Path, target: Path) -> None:
    """Put the directory `staging` at `target`, replacing what was there, with renames only: killed between its two
    renames it leaves the old directory at `TARGET.old`, which `restore_dir` puts back."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def restore_dir(path: Path) -> None:
    """Put back at `path` the directory a `replace_dir` killed between its renames left at `PATH.old`."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)


def remove_dir(path: Path) -> None:
    """Remove the directory `path` and what `replace_dir` leaves beside it (`.tmp`, `.old`): renamed away first, so a
    removal killed part way never leaves a half-deleted directory under `path`."""
    for p in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        gone = p.with_name(p.name + ".removing")
        shutil.rmtree(gone, ignore_errors=True)
        if p.exists():
            p.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)


@contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block, or raise `PperError`
    naming `what` and the holder's pid if another process holds it. The kernel drops the lock when its holder
    dies, so a killed run never leaves a stale one."""
    import fcntl

    from .errors import PperError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            message = f"{what} is in use by another pper process (pid {holder}): wait for it or stop it"
            raise PperError(message) from None
        except OSError as e:  # a filesystem without locks (some NFS and Lustre mounts): go on, unguarded
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            import warnings

            warnings.warn(f"cannot lock {path} ({e.strerror}): nothing stops a second process using {what}",
                          stacklevel=3)  # fmt: skip
            yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
