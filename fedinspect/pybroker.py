"""A development-only MQTT broker inside this process (amqtt), for the demo on machines without Mosquitto.

Bound to 127.0.0.1 only, anonymous, MQTT 3.1.1, no persistence, known to be slower than Mosquitto and looser
about retained messages (see ../shared/notes/mqtt.md): never use it for anything but a local demo.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fedinspect.devbroker import free_port

WARNING = (
    "WARNING: mosquitto is not installed, so the demo runs an in-process Python broker (amqtt). It is for this "
    "local demo only: no TLS, no login, no persistence, MQTT 3.1.1. Install mosquitto (sudo apt-get install -y "
    "mosquitto) for anything else."
)


class PythonBroker:
    """amqtt in a thread with its own event loop; ``start`` returns once it listens on 127.0.0.1:``port``."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="python-broker", daemon=True)
        self._broker: Any = None

    def start(self, timeout: float = 15.0) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 64}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._thread.start()

        async def run() -> Any:
            broker = Broker(config)
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(15)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
