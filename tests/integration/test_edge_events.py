"""Inspection events over the real broker: in order, at least once, and nothing lost while the broker is down."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.buffer import EdgeBuffer
from edge.db import open_edge_database
from edge.events import EventPublisher
from fedinspect.devbroker import MosquittoBroker
from runtime.mqtt import MqttLink
from schemas.config import BrokerConfig, ReviewConfig
from schemas.messages import InspectionEventMessage, Role
from tests.edge.test_buffer import record, result
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


class PersistentSubscriber:
    """A consumer with a persistent session: the broker keeps its QoS 1 messages while it is away."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"consumer-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def sample_ids(self) -> list[str]:
        with self._lock:
            return [InspectionEventMessage.model_validate_json(p).body.sample_id for p in self.payloads]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_events_inspected_while_the_broker_is_down_all_arrive_in_order(
    private_broker: MosquittoBroker, broker_config: Callable[..., BrokerConfig], tmp_path: Path
) -> None:
    config = broker_config(private_broker)
    link = MqttLink(config, role=Role.EDGE, node_id="line-1")
    topic = link.topics.edge_events("line-1")
    consumer = PersistentSubscriber(private_broker, topic)
    buffer = EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images")
    publisher = EventPublisher(buffer, link, idle_s=0.1)
    link.start()
    link.wait_connected(10)
    publisher.start()
    try:

        def inspect(index: int) -> str:
            stored = record(
                buffer,
                index.to_bytes(4, "big") * 8,
                result(0.1),
                source="http",
                review=ReviewConfig(),
                event_topic=topic,
            )
            publisher.notify()
            return stored.sample_id

        expected = [inspect(i) for i in range(5)]
        wait_until(lambda: consumer.sample_ids() == expected, 10, "first events delivered")
        private_broker.stop()
        wait_until(lambda: not link.connected, 10, "link notices the outage")
        expected += [inspect(i) for i in range(5, 55)]  # 50 inspections during the outage
        assert buffer.outbox.backlog() == 50
        private_broker.start()
        wait_until(lambda: buffer.outbox.backlog() == 0, 30, "backlog drained")
        wait_until(lambda: len(set(consumer.sample_ids())) == 55, 20, "all events arrived")
        received = consumer.sample_ids()
        deduplicated = list(dict.fromkeys(received))  # at least once: a repeat may follow a reconnect
        assert deduplicated == expected, "every event, in inspection order"
    finally:
        publisher.stop()
        link.stop(timeout=2)
        consumer.close()
