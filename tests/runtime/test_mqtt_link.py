"""MqttLink against a real Mosquitto: birth / last will, offline queueing, reconnect, size limit, ACL, TLS."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fedinspect.devbroker import MosquittoBroker
from fedinspect.pki import CertificateAuthority
from runtime.mqtt import MqttLink, ReceivedMessage
from schemas.base import utc_now
from schemas.config import BrokerConfig, TlsConfig
from schemas.errors import LinkNotConnectedError, PayloadTooLargeError, PublishDeniedError
from schemas.messages import (
    CommandMessage,
    InspectionEventBody,
    InspectionEventMessage,
    ReportStatusCommand,
    Role,
    StageLatency,
    StatusBody,
    StatusMessage,
)
from tests.conftest import ACL_USERS
from tests.support.recorder import MessageRecorder, RecordedMessage

pytestmark = pytest.mark.broker
REPO_ROOT = Path(__file__).resolve().parents[2]


def inspection_event(edge_id: str, n: int) -> InspectionEventMessage:
    return InspectionEventMessage(
        sender=edge_id,
        body=InspectionEventBody(
            sample_id=f"s{n}",
            image_sha256="0" * 64,
            source="test",
            captured_at=utc_now(),
            image_width=64,
            image_height=64,
            verdict="good",
            score=0.1,
            model_versions={"classifier": 0},
            latency=StageLatency(decode_ms=1, classify_ms=2, total_ms=3),
        ),
    )


def status_state(message: RecordedMessage) -> str:
    return StatusMessage.model_validate_json(message.payload).body.state


class Inbox:
    """Collects what a handler receives, thread-safely, and waits for a count."""

    def __init__(self) -> None:
        self.items: list[ReceivedMessage[Any]] = []
        self._cond = threading.Condition()

    def __call__(self, message: ReceivedMessage[Any]) -> None:
        with self._cond:
            self.items.append(message)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage[Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout):
                raise AssertionError(f"expected {count} messages, got {len(self.items)}")
            return list(self.items)


@pytest.fixture
def links() -> Iterator[Callable[..., MqttLink]]:
    """Start links and stop them all at the end of the test."""
    started: list[MqttLink] = []

    def make(config: BrokerConfig, role: Role, node_id: str, *, start: bool = True, **kw: Any) -> MqttLink:
        link = MqttLink(config, role=role, node_id=node_id, **kw)
        started.append(link)
        if start:
            link.start()
        return link

    yield make
    for link in started:
        link.stop(timeout=2)


def test_birth_online_then_sigkill_leaves_retained_offline(
    broker: MosquittoBroker, topic_prefix: str, recorder: MessageRecorder
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.link_process",
            "--port",
            str(broker.port),
            "--prefix",
            topic_prefix,
            "--edge-id",
            "edge-k",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        topic = f"{topic_prefix}/edge/edge-k/status"
        birth = recorder.wait_for(topic, lambda m: status_state(m) == "online")[0]
        assert StatusMessage.model_validate_json(birth.payload).body.software_version == "test"
        proc.kill()
        proc.wait(10)
        recorder.wait_for(topic, lambda m: status_state(m) == "offline", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    late = MessageRecorder(broker.host, broker.port, topic)
    try:
        retained = late.wait_for(topic)[0]
        assert retained.retain is True
        assert status_state(retained) == "offline"
    finally:
        late.close()


def test_status_provider_fills_the_birth_message(
    broker_config: Callable[..., BrokerConfig], recorder: MessageRecorder, links: Callable[..., MqttLink]
) -> None:
    def provider() -> StatusBody:
        return StatusBody(state="online", role=Role.EDGE, model_versions={"detector": 3}, backlogs={"outbox": 7})

    link = links(broker_config(), Role.EDGE, "edge-p", status_provider=provider)
    link.wait_connected(10)
    body = StatusMessage.model_validate_json(recorder.wait_for(link.status_topic)[0].payload).body
    assert body.model_versions == {"detector": 3}
    assert body.backlogs == {"outbox": 7}


def test_graceful_stop_publishes_retained_offline(
    broker_config: Callable[..., BrokerConfig], recorder: MessageRecorder
) -> None:
    link = MqttLink(broker_config(), role=Role.HUB, node_id="hub")
    link.start()
    link.wait_connected(10)
    recorder.wait_for(link.status_topic, lambda m: status_state(m) == "online")
    link.stop()
    recorder.wait_for(link.status_topic, lambda m: status_state(m) == "offline")
    assert link.topics.hub_status() == link.status_topic


def test_qos1_messages_wait_while_subscriber_is_offline(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink]
) -> None:
    config = broker_config()
    hub = MqttLink(config, role=Role.HUB, node_id="hub")
    first_inbox = Inbox()
    hub.subscribe(hub.topics.all_edge_events(), first_inbox, message_type=InspectionEventMessage)
    hub.start()
    hub.wait_connected(10)
    hub.stop()  # persistent session: the broker keeps the subscription and queues for it

    edge = links(config, Role.EDGE, "edge-q")
    sent = [inspection_event("edge-q", n) for n in range(20)]
    for message in sent:
        edge.publish(edge.topics.edge_events("edge-q"), message).wait()

    inbox = Inbox()
    again = links(config, Role.HUB, "hub", start=False)
    again.subscribe(again.topics.all_edge_events(), inbox, message_type=InspectionEventMessage)
    again.start()
    received = inbox.wait(20)
    assert [m.payload.id for m in received] == [m.id for m in sent]
    assert first_inbox.items == []


@pytest.mark.slow
def test_link_reconnects_after_broker_restart(
    private_broker: MosquittoBroker, broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink]
) -> None:
    config = broker_config(private_broker)
    inbox = Inbox()
    hub = links(config, Role.HUB, "hub", start=False)
    hub.subscribe(hub.topics.all_edge_events(), inbox, message_type=InspectionEventMessage)
    hub.start()
    edge = links(config, Role.EDGE, "edge-r")
    hub.wait_connected(10)
    edge.wait_connected(10)

    private_broker.stop()
    deadline = time.monotonic() + 10
    while edge.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not edge.connected
    # Published while the broker is down: paho keeps it and sends it after the reconnect.
    queued = inspection_event("edge-r", 1)
    edge.publish(edge.topics.edge_events("edge-r"), queued)

    private_broker.start()
    edge.wait_connected(15)
    hub.wait_connected(15)
    after = inspection_event("edge-r", 2)
    edge.publish(edge.topics.edge_events("edge-r"), after).wait()
    ids = [m.payload.id for m in inbox.wait(2, timeout=15)]
    assert set(ids) == {queued.id, after.id}
    assert edge.stats.connects >= 2
    assert edge.stats.disconnects >= 1


def test_oversize_publish_is_refused_locally(
    broker_config: Callable[..., BrokerConfig], recorder: MessageRecorder, links: Callable[..., MqttLink]
) -> None:
    link = links(broker_config(max_payload_bytes=300_000), Role.EDGE, "edge-o")
    link.wait_connected(10)
    topic = link.topics.edge_update("edge-o", "t1")
    with pytest.raises(PayloadTooLargeError) as caught:
        link.publish(topic, b"x" * 300_001)
    assert caught.value.size == 300_001
    assert caught.value.limit == 300_000
    assert "max_payload_bytes" in str(caught.value) and topic in str(caught.value)
    link.publish(topic, b"y" * 300_000).wait()
    arrived = recorder.wait_for(topic)
    assert [len(m.payload) for m in arrived] == [300_000]  # the refused one never reached the broker
    assert link.stats.publishes_oversize == 1


def test_invalid_messages_and_failing_handlers_never_stop_the_loop(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink]
) -> None:
    config = broker_config()
    inbox = Inbox()
    calls = {"n": 0}

    def handler(message: ReceivedMessage[InspectionEventMessage]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("handler bug")
        inbox(message)

    hub = links(config, Role.HUB, "hub", start=False)
    hub.subscribe(hub.topics.all_edge_events(), handler, message_type=InspectionEventMessage)
    hub.start()
    hub.wait_connected(10)
    edge = links(config, Role.EDGE, "edge-i")
    edge.wait_connected(10)
    topic = edge.topics.edge_events("edge-i")
    edge.publish(topic, b"{not json").wait()
    edge.publish(topic, b'{"schema_version": 1, "type": "inspection_event"}').wait()
    edge.publish(topic, inspection_event("edge-i", 1)).wait()  # handler raises on this one
    last = inspection_event("edge-i", 2)
    edge.publish(topic, last).wait()

    received = inbox.wait(1)
    assert received[0].payload.id == last.id
    assert received[0].topic == topic
    assert hub.stats.messages_invalid == 2
    assert hub.stats.handler_errors == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        received[0].topic = "changed"  # type: ignore[misc]


def test_acl_denies_writing_under_another_edge(
    acl_broker: MosquittoBroker,
    broker_config: Callable[..., BrokerConfig],
    make_recorder: Callable[..., MessageRecorder],
    links: Callable[..., MqttLink],
) -> None:
    hub_view = make_recorder(acl_broker, "fedinspect/v1/#", username="hub", password=ACL_USERS["hub"])
    config = broker_config(acl_broker, topic_prefix="fedinspect/v1", username="edge-a", password=ACL_USERS["edge-a"])
    edge = links(config, Role.EDGE, "edge-a")
    edge.wait_connected(10)

    with pytest.raises(PublishDeniedError) as caught:
        edge.publish(edge.topics.edge_events("edge-b"), inspection_event("edge-a", 1)).wait()
    assert caught.value.reason_code == 135
    with pytest.raises(PublishDeniedError):
        edge.publish(edge.topics.model_announce("detector"), b"{}").wait()

    own = inspection_event("edge-a", 2)
    edge.publish(edge.topics.edge_events("edge-a"), own).wait()
    assert [m.payload for m in hub_view.wait_for(edge.topics.edge_events("edge-a"))] == [own.to_json_bytes()]
    assert hub_view.on_topic(edge.topics.edge_events("edge-b")) == []
    assert edge.stats.publishes_denied == 2


def test_wrong_password_is_refused_with_a_reason(
    acl_broker: MosquittoBroker, broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink]
) -> None:
    config = broker_config(acl_broker, username="edge-a", password="wrong")
    link = links(config, Role.EDGE, "edge-a")
    with pytest.raises(LinkNotConnectedError, match="refused"):
        link.wait_connected(3)
    assert link.stats.connect_failures >= 1


def test_tls_with_client_certificates(
    tls_broker: MosquittoBroker,
    broker_config: Callable[..., BrokerConfig],
    tls_client_config: Callable[[str], TlsConfig],
    links: Callable[..., MqttLink],
) -> None:
    hub = links(broker_config(tls_broker, tls=tls_client_config("hub")), Role.HUB, "hub", start=False)
    inbox = Inbox()
    hub.subscribe(hub.topics.edge_command("edge-t"), inbox, message_type=CommandMessage)
    hub.start()
    edge = links(broker_config(tls_broker, tls=tls_client_config("edge-t")), Role.EDGE, "edge-t")
    hub.wait_connected(10)
    edge.wait_connected(10)
    command = CommandMessage(
        sender="hub", body=ReportStatusCommand(action="report_status", expires_at=utc_now() + timedelta(minutes=5))
    )
    edge.publish(edge.topics.edge_command("edge-t"), command).wait()
    assert inbox.wait(1)[0].payload == command


def test_tls_without_client_certificate_is_refused(
    tls_broker: MosquittoBroker,
    broker_config: Callable[..., BrokerConfig],
    test_ca: CertificateAuthority,
    links: Callable[..., MqttLink],
) -> None:
    tls = TlsConfig(ca_file=test_ca.ca_file)
    link = links(broker_config(tls_broker, tls=tls), Role.EDGE, "edge-nocert")
    with pytest.raises(LinkNotConnectedError, match="TLS"):
        link.wait_connected(3)


def test_mqtt_311_link_queues_for_offline_subscriber(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink]
) -> None:
    config = broker_config(protocol="3.1.1")
    hub = MqttLink(config, role=Role.HUB, node_id="hub")
    hub.subscribe(hub.topics.all_edge_events(), Inbox(), message_type=InspectionEventMessage)
    hub.start()
    hub.wait_connected(10)
    hub.stop()
    edge = links(config, Role.EDGE, "edge-v3")
    sent = inspection_event("edge-v3", 1)
    edge.publish(edge.topics.edge_events("edge-v3"), sent).wait()
    inbox = Inbox()
    again = links(config, Role.HUB, "hub", start=False)
    again.subscribe(again.topics.all_edge_events(), inbox, message_type=InspectionEventMessage)
    again.start()
    assert inbox.wait(1)[0].payload == sent
