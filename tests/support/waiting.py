"""Polling for conditions that other threads or processes make true."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
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
