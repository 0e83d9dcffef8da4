"""Inference watchdog: a call that runs past its limit marks the engine unhealthy.

Calls are tracked while they run, so a call that hangs is seen as soon as it passes the limit, not only when it
returns. The engine turns healthy again once a later call completes within the limit. The health endpoint and the
systemd watchdog ping read ``status()``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchdogStatus:
    """Whether inference is healthy, and if not, why."""

    healthy: bool
    reason: str | None = None


class InferenceWatchdog:
    """Tracks running inference calls against a time limit (thread-safe)."""

    def __init__(self, limit_s: float) -> None:
        if limit_s <= 0:
            raise ValueError(f"watchdog limit must be > 0 seconds, got {limit_s}")
        self.limit_s = limit_s
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float]] = {}
        self._tokens = itertools.count()
        self._overrun: str | None = None

    @contextmanager
    def track(self, what: str) -> Iterator[None]:
        """Time one inference call named ``what`` (e.g. the model name)."""
        token = next(self._tokens)
        started = time.monotonic()
        with self._lock:
            self._running[token] = (what, started)
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                del self._running[token]
                if elapsed > self.limit_s:
                    self._overrun = f"inference on {what} took {elapsed:.2f} s, over the {self.limit_s:g} s limit"
                    log.error("inference over the watchdog limit", extra={"model": what, "elapsed_s": elapsed})
                elif self._overrun is not None:
                    log.info("inference back within the watchdog limit", extra={"model": what})
                    self._overrun = None

    def status(self) -> WatchdogStatus:
        """Unhealthy while a call runs past the limit, or after one did until a later call finishes in time."""
        now = time.monotonic()
        with self._lock:
            for what, started in self._running.values():
                if now - started > self.limit_s:
                    return WatchdogStatus(
                        False,
                        f"inference on {what} running for {now - started:.2f} s, over the {self.limit_s:g} s limit",
                    )
            if self._overrun is not None:
                return WatchdogStatus(False, self._overrun)
        return WatchdogStatus(True)
