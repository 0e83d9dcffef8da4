"""`fedinspect edge run` / `fedinspect hub run` as real child processes of a test, with their logs in a file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.access import bearer
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
        self._token: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        """The header of an admin token of this agent's API (made in its tokens file on first use)."""
        if self._token is None:
            from runtime.access import ApiRole, api_tokens_file
            from schemas.config import EdgeConfig, HubConfig, load_config
            from tests.support.access import token_for

            config = load_config(self.config_file, EdgeConfig if self.role == "edge" else HubConfig)
            assert isinstance(config, EdgeConfig | HubConfig)
            _, self._token = token_for(api_tokens_file(config.http, config.data_dir), ApiRole.ADMIN, "test-admin")
        return bearer(self._token)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None, timeout_s: float = 60) -> None:
        _ = self.auth  # the token exists before the process reads its tokens file, and before any thread asks
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


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[None]:
    """``app`` on a real uvicorn server in a thread (``options``: host, port, ssl files) until the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
