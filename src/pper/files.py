"""Files written atomically: the whole new content appears under the name at once, or nothing changes.

A killed writer leaves the old file (or none) and, at most, a stray `NAME.tmp` beside it that the next
write replaces. This is the one place pper writes a whole file; append-only logs are in `jsonl.py`.
"""

from __future__ import annotations

import errno
import os
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
