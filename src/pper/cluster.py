"""Joining a Ray cluster, shared by the Ray back-ends of testing (`pper.execution.ray_backend`) and sampling
(`pper.generation.ray_sampler`). Ray is imported only here and in those modules (the `ray` extra)."""

from __future__ import annotations

import socket
from typing import Any

from .errors import PperError


def ray_module() -> Any:
    """The `ray` module, or a `PperError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise PperError("the Ray back-ends need Ray: pip install 'pper[ray]'") from None
    return ray


def connect(address: str | None) -> bool:
    """Make sure this process is connected to Ray: if it is not yet, start a Ray instance on this machine
    (`address` None) or join the cluster at `address` ("auto", "host:port", "ray://host:port"). Returns
    whether this call connected (the caller then disconnects with `ray.shutdown()` when done)."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    address = address or "local"
    check_reachable(address)  # Ray itself retries an unreachable address for minutes
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise PperError(f"cannot reach the Ray cluster at {address!r}: {e}") from None
    return True


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Raise `PperError` if `address` ("host:port" or "ray://host:port") takes no TCP connection."""
    if address in ("local", "auto") or ":" not in address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise PperError(
            f"cannot reach the Ray cluster at {address!r}: {e} (is `ray start --head` running there? "
            "leave execution.ray.address unset to start Ray on this machine)"
        ) from None


def reason(error: BaseException) -> str:
    """The last line of a Ray error (its remote traceback ends with the exception)."""
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
