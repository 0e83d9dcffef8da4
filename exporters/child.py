"""Run an exporter worker module in a child process and read its JSON result.

Workers print their result as JSON on the last stdout line; on a bad input they print ``error: ...`` on stderr
and exit non-zero. Child processes keep frameworks that must not meet (TensorFlow and torch) or must not load
into a service (torch in the hub) out of the caller.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from exporters.errors import ExportError
from runtime.processes import child_environment, worker_error


def run_worker(
    module: str,
    request: dict[str, Any],
    *,
    what: str,
    timeout_s: float,
    python: str | None = None,
    env: dict[str, str] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run ``python -m module '<request json>'`` (``runtime.processes.child_environment``: dies with this process,
    ``threads`` math threads); return its JSON result or raise ``ExportError`` naming ``what``."""
    child_env = child_environment(env, threads=threads)
    child_env.setdefault("KERAS_HOME", str(Path(tempfile.gettempdir()) / "fedinspect-keras-home"))
    try:
        completed = subprocess.run(
            [python or sys.executable, "-m", module, json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=child_env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what} did not finish within {timeout_s:g} s") from None
    if completed.returncode != 0:
        detail = worker_error(completed.stderr)
        if "No module named 'tensorflow'" in completed.stderr:
            detail = "TensorFlow is not installed: pip install 'fedinspect[tensorflow]'"
        elif "No module named 'torch'" in completed.stderr:
            detail = "PyTorch is not installed: pip install 'fedinspect[train]'"
        raise ExportError(f"{what} failed: {detail}")
    lines = completed.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise ExportError(f"{what} gave no result: {worker_error(completed.stderr)}") from None
    return result
