"""Child processes that must not outlive their parent (trainers, the demo's broker, hub and edges)."""

from __future__ import annotations

import os
import signal
import sys

PARENT_PID_ENV = "FEDINSPECT_PARENT_PID"
EXIT_ORPHANED = 3


def die_with_parent() -> None:
    """Ask Linux to SIGKILL the calling process when its parent dies (a no-op elsewhere).

    Call it first thing in a child, or pass it as ``preexec_fn``. With ``FEDINSPECT_PARENT_PID`` set, a child whose
    parent already died before the signal was armed exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    expected = os.environ.get(PARENT_PID_ENV)
    if expected is not None and os.getppid() != int(expected):
        os._exit(EXIT_ORPHANED)  # the parent died before the signal was armed
