"""The demo's development-only Python broker carries our MQTT link's messages (MQTT 3.1.1, loopback)."""

from __future__ import annotations

import threading

import pytest

from runtime.mqtt import MqttLink, ReceivedMessage
from schemas.config import BrokerConfig
from schemas.messages import CommandMessage, ReportStatusCommand, Role

pytest.importorskip("amqtt")


def test_python_broker_carries_typed_messages_between_links() -> None:
    from datetime import timedelta

    from fedinspect.pybroker import PythonBroker
    from schemas.base import utc_now

    broker = PythonBroker()
    broker.start()
    config = BrokerConfig(host="127.0.0.1", port=broker.port, protocol="3.1.1", topic_prefix="demo/v1")
    hub, edge = MqttLink(config, role=Role.HUB, node_id="hub"), MqttLink(config, role=Role.EDGE, node_id="e1")
    received: list[CommandMessage] = []
    arrived = threading.Event()

    def on_command(message: ReceivedMessage[CommandMessage]) -> None:
        received.append(message.payload)
        arrived.set()

    edge.subscribe(edge.topics.edge_command("e1"), on_command, message_type=CommandMessage)
    try:
        for link in (edge, hub):
            link.start()
            link.wait_connected(10)
        command = CommandMessage(
            sender="hub",
            body=ReportStatusCommand(action="report_status", expires_at=utc_now() + timedelta(minutes=1)),
        )
        hub.publish(hub.topics.edge_command("e1"), command)
        assert arrived.wait(10)
        assert received[0].id == command.id
    finally:
        for link in (edge, hub):
            link.stop(timeout=2)
        broker.stop()
    assert broker.host == "127.0.0.1"
