"""Child processes of fedinspect (trainers, exporter and BatchNorm workers, the demo's broker, hub and edges): how
they are started and how they report, so that none outlives its parent and every failure says why.

A worker is ``python -m <module> ...`` started with ``child_environment()`` (the project importable, the parent's
pid, optional thread limits), calls ``die_with_parent()`` first, and prints ``error: <why>`` on stderr before it
exits non-zero; ``worker_error`` reads that line back for the parent's message.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

PARENT_PID_ENV = "FEDINSPECT_PARENT_PID"
EXIT_ORPHANED = 3
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
"""The folder that holds the fedinspect packages: on a child's PYTHONPATH, so a source checkout runs as installed."""
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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


def child_environment(extra: Mapping[str, str] | None = None, *, threads: int | None = None) -> dict[str, str]:
    """This process's environment for a worker: the project first on PYTHONPATH, this pid as the parent's (see
    ``die_with_parent``), ``threads`` as every math library's thread count (set before the child imports numpy or
    torch, so none starts a thread per core), then ``extra``."""
    env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PROJECT_ROOT + (os.pathsep + existing if existing else "")
    if threads is not None:
        env.update(dict.fromkeys(THREAD_ENV, str(threads)))
    env.update(extra or {})
    return env


def worker_error(stderr: str, *, lines: int = 3) -> str:
    """Why a worker failed: its last ``error: ...`` line, else the last ``lines`` lines of its stderr."""
    output = stderr.strip().splitlines()
    errors = [line for line in output if line.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    return " | ".join(output[-lines:]) or "(no output)"
