"""Polling for conditions that other threads or processes make true."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until true; on timeout fail naming ``what`` and, if given, what ``explain`` says of the state
    (so a failure far away, e.g. in CI, shows why it waited in vain)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            details = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"{what} not met within {timeout:g} s{details}")
        time.sleep(0.02)


def drain_datagrams(sock: socket.socket, quiet_s: float = 1.0) -> list[str]:
    """Every datagram still arriving on ``sock`` until it stays quiet for ``quiet_s`` (e.g. sd_notify's tail)."""
    received = []
    sock.settimeout(quiet_s)
    try:
        while True:
            received.append(sock.recv(4096).decode())
    except TimeoutError:
        return received
