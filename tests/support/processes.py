"""`fedinspect edge run` / `fedinspect hub run` as real child processes of a test, with their logs in a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def png(image: np.ndarray) -> bytes:
    import cv2

    return bytes(cv2.imencode(".png", image)[1])


class Agent:
    """One edge agent (``role="edge"``, ready when /readyz says so) or hub (``role="hub"``, /healthz) process."""

    def __init__(self, config_file: Path, port: int, log_file: Path, role: str = "edge") -> None:
        self.config_file, self.port, self.log_file, self.role = config_file, port, log_file, role
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None, timeout_s: float = 60) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})}
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fedinspect.cli", self.role, "run", "--config", str(self.config_file)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=REPO_ROOT,
            )
        path = "/readyz" if self.role == "edge" else "/healthz"

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_file.read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}{path}", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, f"{self.role} process ready")

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
