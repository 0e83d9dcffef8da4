"""The resilient MQTT link that the edge agent and the hub both use (paho-mqtt 2, MQTT 5 by default).

What it guarantees:
- a retained status on the node's status topic: birth "online" on every connect, last will "offline" when the
  connection dies, an explicit "offline" on a graceful stop;
- a persistent session (clean_start false + session expiry on MQTT 5, clean_session false on 3.1.1), so QoS 1
  messages wait at the broker while this node is offline;
- reconnect by itself with a bounded, doubling backoff, also when the broker is down at start-up;
- typed handlers per topic filter: a payload that fails validation is logged with its topic and dropped, and a
  handler that raises is logged; neither ever stops the network loop;
- publish refuses a payload over ``broker.max_payload_bytes`` locally (a broker with a size limit would drop it
  silently or make the client loop on reconnects), and reports a publish the broker denies (MQTT 5 reason code,
  e.g. 135 Not authorized). On MQTT 3.1.1 brokers drop denied publishes silently; nothing can report them.

Handlers run on the network thread: keep them short and hand long work to a queue. Register subscriptions before
``start()`` so messages the broker queued for this session while it was offline find their handler.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from schemas.base import validation_problems
from schemas.config import BrokerConfig, MqttProtocol
from schemas.errors import (
    LinkNotConnectedError,
    PayloadTooLargeError,
    PublishDeniedError,
    PublishTimeoutError,
)
from schemas.messages import Envelope, Role, StatusBody, StatusMessage
from schemas.topics import TopicTree

log = logging.getLogger(__name__)

PayloadT = TypeVar("PayloadT")
EnvelopeT = TypeVar("EnvelopeT", bound=Envelope)


@dataclass(frozen=True)
class ReceivedMessage(Generic[PayloadT]):
    """One incoming message as handlers see it: the parsed envelope (or raw bytes for binary topics)."""

    topic: str
    payload: PayloadT
    retain: bool
    qos: int


Handler = Callable[[ReceivedMessage[Any]], None]


@dataclass(frozen=True)
class _Subscription:
    topic_filter: str
    qos: int
    message_type: type[Envelope] | None
    handler: Handler


@dataclass
class LinkStats:
    """Counters a process exports as metrics."""

    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    messages_received: int = 0
    messages_invalid: int = 0
    messages_unhandled: int = 0
    handler_errors: int = 0
    publishes: int = 0
    publishes_denied: int = 0
    publishes_oversize: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)


def _disable_nagle(client: paho.Client, userdata: Any, sock: Any) -> None:
    # Acks, statuses and commands are small: with Nagle they wait for the peer's delayed ACK (about 40 ms).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        log.debug("TCP_NODELAY not available on this socket")


class PublishHandle:
    """A publish in progress; ``wait`` blocks until the broker acknowledges it (QoS 1) or it was written (QoS 0)."""

    def __init__(self, link: MqttLink, topic: str, mid: int, started: float) -> None:
        self.topic = topic
        self.mid = mid
        self._link = link
        self._started = started

    def wait(self, timeout: float | None = None) -> None:
        """Raise PublishDeniedError if the broker refused it, PublishTimeoutError if no answer came in time."""
        self._link._await_ack(self, self._link.config.publish_timeout_s if timeout is None else timeout)


class MqttLink:
    """One node's connection to the broker. Thread-safe; create, subscribe, ``start()``, publish, ``stop()``."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        role: Role,
        node_id: str,
        software_version: str | None = None,
        status_provider: Callable[[], StatusBody] | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.node_id = node_id
        self.topics = TopicTree(config.topic_prefix)
        self.status_topic = self.topics.edge_status(node_id) if role == Role.EDGE else self.topics.hub_status()
        self.stats = LinkStats()
        self.last_error: str | None = None
        self._software_version = software_version
        self._status_provider = status_provider
        self._subscriptions: list[_Subscription] = []
        self._subscriptions_lock = threading.Lock()
        self._connected = threading.Event()
        self._connect_subscribe_mid: int | None = None
        self._stopping = False
        self._started = False
        # PUBACK reason codes by message id, stamped with when they arrived. paho calls on_publish while holding
        # its own mutex, so this lock is never held while calling into paho. Keys are mids, so at most 65535.
        self._acks: dict[int, tuple[float, ReasonCode]] = {}
        self._ack_cond = threading.Condition()
        self._client = self._build_client()

    # -- set-up ------------------------------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self.config.client_id or f"fedinspect-{self.role.value}-{self.node_id}"

    def _status_message(self, body: StatusBody) -> StatusMessage:
        return StatusMessage(sender=self.node_id, body=body)

    def _offline_body(self) -> StatusBody:
        return StatusBody(state="offline", role=self.role, software_version=self._software_version)

    def _build_client(self) -> paho.Client:
        cfg = self.config
        v5 = cfg.protocol == MqttProtocol.V5
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=True,
        )
        client.enable_logger(logging.getLogger("paho.mqtt"))
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file),
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            )
            client.tls_insecure_set(not cfg.tls.verify_hostname)
        client.reconnect_delay_set(cfg.reconnect_min_delay_s, cfg.reconnect_max_delay_s)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.will_set(
            self.status_topic, self._status_message(self._offline_body()).to_json_bytes(), qos=1, retain=True
        )
        client.on_socket_open = _disable_nagle
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def start(self) -> None:
        """Connect in the background; returns at once and keeps retrying until the broker answers."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        cfg = self.config
        if cfg.protocol == MqttProtocol.V5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = cfg.session_expiry_s
            self._client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=properties)
        else:
            self._client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        self._client.loop_start()
        log.info(
            "mqtt link starting",
            extra={"client_id": self.client_id, "broker": f"{cfg.host}:{cfg.port}", "protocol": cfg.protocol.value},
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Publish a retained "offline" status, disconnect cleanly (no last will) and stop the network thread."""
        if not self._started:
            return
        self._stopping = True
        if self._connected.is_set():
            try:
                self.publish(self.status_topic, self._status_message(self._offline_body()), retain=True).wait(timeout)
            except Exception as exc:  # the stop must complete even if the broker is going away
                log.warning("offline status not confirmed", extra={"topic": self.status_topic, "error": str(exc)})
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False
        log.info("mqtt link stopped", extra={"client_id": self.client_id})

    def __enter__(self) -> MqttLink:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> None:
        """Block until connected with every subscription active; LinkNotConnectedError after ``timeout``."""
        if not self._connected.wait(timeout):
            raise LinkNotConnectedError(
                f"not connected to {self.config.host}:{self.config.port} after {timeout:g} s"
                + (f": {self.last_error}" if self.last_error else "")
            )

    # -- subscribe ---------------------------------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        handler: Callable[[ReceivedMessage[EnvelopeT]], None] | Callable[[ReceivedMessage[bytes]], None],
        *,
        message_type: type[EnvelopeT] | None = None,
        qos: int = 1,
    ) -> None:
        """Call ``handler`` for every message matching ``topic_filter``; parsed as ``message_type`` if given."""
        subscription = _Subscription(topic_filter, qos, message_type, handler)
        with self._subscriptions_lock:
            self._subscriptions.append(subscription)
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos)

    # -- publish -----------------------------------------------------------------------------------------------

    def publish(self, topic: str, message: Envelope | bytes, *, qos: int = 1, retain: bool = False) -> PublishHandle:
        """Queue a message; QoS 1 messages published while disconnected are sent after reconnect.

        Raises PayloadTooLargeError (nothing is sent) when the payload exceeds broker.max_payload_bytes.
        """
        payload = message.to_json_bytes() if isinstance(message, Envelope) else bytes(message)
        if len(payload) > self.config.max_payload_bytes:
            self.stats.count("publishes_oversize")
            log.error(
                "publish refused: payload too large",
                extra={"topic": topic, "size": len(payload), "limit": self.config.max_payload_bytes},
            )
            raise PayloadTooLargeError(topic, len(payload), self.config.max_payload_bytes)
        started = time.monotonic()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            raise LinkNotConnectedError(f"not connected: QoS 0 message on {topic!r} was dropped")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise LinkNotConnectedError(f"publish on {topic!r} failed: {paho.error_string(info.rc)}")
        self.stats.count("publishes")
        return PublishHandle(self, topic, info.mid, started)

    def publish_status(self) -> PublishHandle:
        """Publish a fresh retained "online" status (from the status provider, if any)."""
        body = StatusBody(state="online", role=self.role, software_version=self._software_version)
        if self._status_provider is not None:
            try:
                body = self._status_provider()
            except Exception as exc:
                log.exception("status provider failed", extra={"topic": self.status_topic})
                body = body.model_copy(update={"last_error": f"status provider failed: {exc}"})
        return self.publish(self.status_topic, self._status_message(body), retain=True)

    def _await_ack(self, handle: PublishHandle, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._ack_cond:
            while True:
                entry = self._acks.get(handle.mid)
                # An entry stamped before this publish started belongs to an earlier message with a reused mid.
                if entry is not None and entry[0] >= handle._started:
                    del self._acks[handle.mid]
                    reason = entry[1]
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PublishTimeoutError(handle.topic, timeout)
                self._ack_cond.wait(remaining)
        if reason.is_failure:
            self.stats.count("publishes_denied")
            log.warning(
                "publish denied by broker",
                extra={"topic": handle.topic, "reason_code": reason.value, "reason": str(reason)},
            )
            raise PublishDeniedError(handle.topic, reason.value, str(reason))

    # -- paho callbacks (network thread) -----------------------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            self.stats.count("connect_failures")
            log.error(
                "mqtt connect refused",
                extra={"client_id": self.client_id, "reason_code": reason_code.value, "reason": str(reason_code)},
            )
            return
        self.stats.count("connects")
        self.last_error = None
        log.info(
            "mqtt connected",
            extra={"client_id": self.client_id, "session_present": bool(getattr(flags, "session_present", False))},
        )
        with self._subscriptions_lock:
            subscriptions = [(sub.topic_filter, sub.qos) for sub in self._subscriptions]
        if not subscriptions:
            self._ready()
            return
        # "Connected" means able to receive: wait for the SUBACK before telling anyone (see _on_subscribe).
        _, self._connect_subscribe_mid = client.subscribe(subscriptions)

    def _ready(self) -> None:
        self._connected.set()
        self.publish_status()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.stats.count("connect_failures")
        self.last_error = (
            f"cannot connect to {self.config.host}:{self.config.port} (unreachable, refused, or TLS handshake failed)"
        )
        log.warning("mqtt connect failed, retrying", extra={"client_id": self.client_id, "error": self.last_error})

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping:
            return
        if not was_connected:
            # A refused CONNACK already recorded its reason, which is more useful than this one.
            if not (self.last_error or "").startswith("broker refused"):
                self.last_error = (
                    f"connection closed before the broker accepted it ({reason_code}): check TLS certificates "
                    "and credentials"
                )
                log.warning("mqtt connection closed during connect", extra={"client_id": self.client_id})
            return
        self.stats.count("disconnects")
        self.last_error = f"disconnected: {reason_code}"
        log.warning(
            "mqtt disconnected, reconnecting",
            extra={"client_id": self.client_id, "reason_code": reason_code.value, "reason": str(reason_code)},
        )

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        for code in reason_codes:
            if code.is_failure:
                log.error("subscription refused", extra={"client_id": self.client_id, "reason": str(code)})
        if mid == self._connect_subscribe_mid:
            self._connect_subscribe_mid = None
            self._ready()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        with self._ack_cond:
            self._acks[mid] = (time.monotonic(), reason_code)
            self._ack_cond.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.stats.count("messages_received")
        with self._subscriptions_lock:
            matching = [s for s in self._subscriptions if paho.topic_matches_sub(s.topic_filter, msg.topic)]
        if not matching:
            self.stats.count("messages_unhandled")
            log.warning("message without handler dropped", extra={"topic": msg.topic})
            return
        for sub in matching:
            self._dispatch(sub, msg)

    def _dispatch(self, sub: _Subscription, msg: paho.MQTTMessage) -> None:
        payload: Any = bytes(msg.payload)
        if sub.message_type is not None:
            if not payload:  # a cleared retained topic, not a message
                return
            try:
                payload = sub.message_type.model_validate_json(payload)
            except ValidationError as exc:
                self.stats.count("messages_invalid")
                problems = validation_problems(exc)
                log.warning(
                    "invalid message dropped",
                    extra={"topic": msg.topic, "expected": sub.message_type.__name__, "problems": problems},
                )
                return
        try:
            sub.handler(ReceivedMessage(topic=msg.topic, payload=payload, retain=bool(msg.retain), qos=msg.qos))
        except Exception:
            self.stats.count("handler_errors")
            log.exception("message handler failed", extra={"topic": msg.topic})
