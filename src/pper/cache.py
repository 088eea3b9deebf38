"""pper's cache directory (stdlib only, so every package may use it)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$PPER_CACHE`, else `~/.cache/pper`: converted models, calibrated time limits."""
    return Path(os.environ.get("PPER_CACHE", Path.home() / ".cache" / "pper"))
