"""Run one training job in its own process: low priority, bounded in time, stoppable, progress relayed.

The child is ``python -m edge.training.worker``; it dies with the agent (parent-death signal), so a SIGKILLed
agent leaves no trainer behind. ``TrainerProcess.run`` blocks until the child ends, is stopped, or overruns
its time limit (then it is killed) and returns the result, or raises ``TrainingError`` saying why.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.training.jobs import DELTA_FILE, PROGRESS_KEY, RESULT_FILE, TrainingError, TrainingJob, TrainingResult
from runtime.processes import child_environment, worker_error

log = logging.getLogger(__name__)
KILL_GRACE_S = 5.0
WORKER_LOG = "worker.log"


class TrainerProcess:
    def __init__(
        self, job: TrainingJob, *, timeout_s: float, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.job = job
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self.pid: int | None = None

    def run(self, stop: threading.Event) -> tuple[TrainingResult, dict[str, np.ndarray]]:
        import safetensors.numpy

        job_file = self.job.write()
        for stale in (RESULT_FILE, DELTA_FILE):
            (self.job.work_dir / stale).unlink(missing_ok=True)
        log_path = self.job.work_dir / WORKER_LOG
        with log_path.open("ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "edge.training.worker", str(job_file)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=child_environment(threads=self.job.threads),
                text=True,
            )
        self.pid = process.pid
        reader = threading.Thread(target=self._relay, args=(process,), name="trainer-output", daemon=True)
        reader.start()
        deadline = time.monotonic() + self.timeout_s
        reason: str | None = None
        interrupted = False
        while process.poll() is None:
            if stop.wait(0.2):
                reason, interrupted = "the agent is stopping", True
            elif time.monotonic() > deadline:
                reason = f"ran past its time limit of {self.timeout_s:.0f} s"
            if reason is not None:
                process.terminate()
                try:
                    process.wait(KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                break
        reader.join(timeout=5)
        if reason is not None:
            raise TrainingError(f"training run {self.job.run_id} stopped: {reason}", interrupted=interrupted)
        result_file = self.job.work_dir / RESULT_FILE
        if process.returncode != 0 or not result_file.is_file():
            raise TrainingError(
                f"training run {self.job.run_id} failed (exit {process.returncode}): {_last_error(log_path)}"
            )
        result = TrainingResult.model_validate_json(result_file.read_bytes())
        delta = safetensors.numpy.load_file(str(self.job.work_dir / DELTA_FILE))
        return result, delta

    def _relay(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # libraries print to stdout too; only our JSON lines count
            if isinstance(message, dict) and PROGRESS_KEY in message:
                progress = dict(message[PROGRESS_KEY])
                log.info("training progress", extra={"run_id": self.job.run_id, **progress})
                if self.on_progress is not None:
                    self.on_progress(progress)


def _last_error(log_path: Path) -> str:
    try:
        return worker_error(log_path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return "(no worker log)"
