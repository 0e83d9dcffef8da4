"""Records every message published under a topic filter, through its own plain paho client (not MqttLink)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class RecordedMessage:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MessageRecorder:
    """Subscribes to ``topic_filter`` and keeps everything it receives, in order."""

    def __init__(
        self, host: str, port: int, topic_filter: str, *, username: str | None = None, password: str | None = None
    ) -> None:
        self.messages: list[RecordedMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        if username:
            self._client.username_pw_set(username, password)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"recorder could not subscribe to {topic_filter!r} on {host}:{port}")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(RecordedMessage(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def on_topic(self, topic: str) -> list[RecordedMessage]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[RecordedMessage], bool] = lambda m: True,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[RecordedMessage]:
        """Wait until ``count`` messages on ``topic`` satisfy ``predicate``; AssertionError with what arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if m.topic == topic and predicate(m)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.topic, m.payload[:120]) for m in self.messages]
                    raise AssertionError(
                        f"expected {count} matching message(s) on {topic!r}, got {len(found)}; all received: {seen}"
                    )
                self._cond.wait(remaining)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
