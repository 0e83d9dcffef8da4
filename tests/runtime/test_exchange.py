"""Chunked exchange over a real broker: resume after SIGKILL, broker restart, small-packet brokers, rejections."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fedinspect.devbroker import MosquittoBroker
from runtime.assembler import TransferAssembler, TransferPlan
from runtime.db import sqlite_engine
from runtime.exchange import ExchangeBase, TransferOutbox, TransferReceiver
from runtime.mqtt import MqttLink, ReceivedMessage
from schemas.bundle import file_digest
from schemas.config import BrokerConfig
from schemas.errors import PayloadTooLargeError, RejectedError, RejectReason
from schemas.manifests import FileDigest, TensorEncoding
from schemas.messages import Role, TransferState, TransferStatusMessage
from schemas.tensors import decode_tensors, encode_tensors
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker
REPO_ROOT = Path(__file__).resolve().parents[2]
RAW = TensorEncoding(dtype="fp32", compression="none")
CHUNK = 65536


@dataclass
class Hub:
    """A receiving side: a link, an assembler and what completed."""

    link: MqttLink
    receiver: TransferReceiver
    completed: dict[str, bytes] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    made: list[Hub] = []

    def make(config: BrokerConfig, reject_with: RejectedError | None = None) -> Hub:
        link = MqttLink(config, role=Role.HUB, node_id="hub")
        assembler = TransferAssembler(
            tmp_path / f"hub-inbox-{len(made)}", chunk_size=config.chunk_size_bytes, max_total_bytes=100_000_000
        )
        hub: Hub

        def on_complete(topic: str, transfer_id: str, artifact: Path) -> None:
            if reject_with is not None:
                raise reject_with
            hub.completed[transfer_id] = artifact.read_bytes()
            hub.done.set()

        receiver = TransferReceiver(
            link,
            assembler,
            chunk_filter=link.topics.all_updates(),
            reply_topic=lambda topic, tid: link.topics.edge_update_status(link.topics.edge_id_of(topic), tid),
            on_complete=on_complete,
            confirm_every=4,
        )
        hub = Hub(link, receiver)
        link.start()
        link.wait_connected(10)
        receiver.start(interval_s=0.5, idle_s=1.0)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        hub.receiver.close()
        hub.link.stop(timeout=2)


@dataclass
class Edge:
    link: MqttLink
    outbox: TransferOutbox


@pytest.fixture
def make_edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    made: list[Edge] = []

    def make(config: BrokerConfig, edge_id: str, **outbox_args: float) -> Edge:
        link = MqttLink(config, role=Role.EDGE, node_id=edge_id)
        state = tmp_path / f"{edge_id}-state"
        engine = sqlite_engine(state / "outbox.db")
        ExchangeBase.metadata.create_all(engine)  # a scratch database: no owner to migrate it
        outbox = TransferOutbox(link, engine, state / "spool", **outbox_args)  # type: ignore[arg-type]
        link.subscribe(
            link.topics.edge_update_statuses(edge_id), outbox.handle_status, message_type=TransferStatusMessage
        )
        link.start()
        link.wait_connected(10)
        outbox.start()
        edge = Edge(link, outbox)
        made.append(edge)
        return edge

    yield make
    for edge in made:
        edge.outbox.stop()
        edge.link.stop(timeout=2)


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"w": rng.standard_normal((512, 1024)).astype(np.float32), "steps": np.array(7, np.int64)}


@pytest.fixture
def artifact(tmp_path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "delta.artifact"
    path.write_bytes(encode_tensors(tensors, RAW))  # about 2 MiB: 33 chunks of 64 KiB
    return path


def assert_same_tensors(data: bytes, tensors: dict[str, np.ndarray]) -> None:
    decoded = decode_tensors(data, RAW)
    assert decoded.keys() == tensors.keys()
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype
        assert np.array_equal(decoded[name], array)


def confirmed_indices(db: Path, transfer_id: str) -> set[int]:
    with sqlite3.connect(db) as conn:
        (bitmap,) = conn.execute(
            "SELECT confirmed FROM outbox_transfers WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
    return {i for i, bit in enumerate(bitmap) if bit}


def start_uploader(
    broker: MosquittoBroker, prefix: str, state: Path, artifact: Path, delay: float
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.upload_process",
            "--port",
            str(broker.port),
            "--prefix",
            prefix,
            "--edge-id",
            "edge-s",
            "--state-dir",
            str(state),
            "--artifact",
            str(artifact),
            "--transfer-id",
            "u-1",
            "--chunk-delay",
            str(delay),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sender_killed_mid_transfer_resumes_without_resending_confirmed_chunks(
    broker: MosquittoBroker,
    topic_prefix: str,
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    artifact: Path,
    tensors: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    hub = make_hub(broker_config(chunk_size_bytes=CHUNK))  # the uploader process cuts 64 KiB chunks
    state = tmp_path / "uploader"
    count = TransferPlan.for_file(artifact, "u-1", CHUNK).count
    first = start_uploader(broker, topic_prefix, state, artifact, delay=0.05)
    try:
        assert first.stdout is not None
        sent_first = 0
        while sent_first < count // 3:
            line = first.stdout.readline()
            assert line, "uploader exited early"
            sent_first += line.startswith("SENT")
    finally:
        first.kill()
        first.wait()
    confirmed = confirmed_indices(state / "outbox.db", "u-1")
    assert 0 < len(confirmed) < count
    assert not hub.done.is_set()

    second = start_uploader(broker, topic_prefix, state, artifact, delay=0.0)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0
    assert "DONE complete" in out.splitlines()  # the verdict may overtake the PUBACK of the last chunk
    resent = {int(line.split()[1]) for line in out.splitlines() if line.startswith("SENT")}
    assert resent and not (resent & confirmed)
    assert hub.done.wait(10)
    assert hub.completed["u-1"] == artifact.read_bytes()
    assert_same_tensors(hub.completed["u-1"], tensors)
    assert not (state / "spool" / "u-1.artifact").exists()  # the sender let go of the confirmed artifact


@pytest.mark.slow
def test_broker_restart_mid_transfer(
    private_broker: MosquittoBroker,
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    make_edge: Callable[..., Edge],
    artifact: Path,
    tensors: dict[str, np.ndarray],
) -> None:
    config = broker_config(private_broker, chunk_size_bytes=CHUNK, publish_timeout_s=2)
    hub = make_hub(config)
    half = threading.Event()
    edge = make_edge(config, "edge-b", chunk_delay_s=0.03, retry_after_s=3)
    edge.outbox._on_chunk_sent = lambda tid, index: half.set() if index >= 10 else None
    edge.outbox.submit(artifact, "u-2", edge.link.topics.edge_update("edge-b", "u-2"))
    assert half.wait(20)
    private_broker.stop()
    private_broker.start()
    record = edge.outbox.wait_finished("u-2", timeout=60)
    assert record.state == TransferState.COMPLETE
    assert hub.done.wait(10)
    assert_same_tensors(hub.completed["u-2"], tensors)


def test_64k_chunks_pass_a_broker_with_max_packet_size_131072(
    tmp_path: Path,
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    make_edge: Callable[..., Edge],
    artifact: Path,
) -> None:
    small = MosquittoBroker(tmp_path / "small-broker", extra_config=["max_packet_size 131072"])
    small.start()
    try:
        config = broker_config(small, chunk_size_bytes=CHUNK, max_payload_bytes=130_000)
        hub = make_hub(config)
        edge = make_edge(config, "edge-m")
        with pytest.raises(PayloadTooLargeError):  # one big message could never pass this broker
            edge.link.publish(edge.link.topics.edge_update("edge-m", "whole"), artifact.read_bytes())
        edge.outbox.submit(artifact, "u-3", edge.link.topics.edge_update("edge-m", "u-3"))
        assert edge.outbox.wait_finished("u-3", timeout=60).state == TransferState.COMPLETE
        assert hub.done.wait(10)
    finally:
        small.stop()


def test_corrupt_chunk_is_rejected_counted_and_fetched_again(
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    make_edge: Callable[..., Edge],
    artifact: Path,
    tmp_path: Path,
) -> None:
    config = broker_config(chunk_size_bytes=CHUNK)
    hub = make_hub(config)
    edge = make_edge(config, "edge-c", retry_after_s=2)
    topic = edge.link.topics.edge_update("edge-c", "u-4")
    corrupt = bytearray(TransferPlan.for_file(artifact, "u-4", CHUNK).frame(1))
    corrupt[-10] ^= 0xFF
    edge.link.publish(topic, bytes(corrupt)).wait()
    original = artifact.read_bytes()
    edge.outbox.submit(artifact, "u-4", topic)
    assert edge.outbox.wait_finished("u-4", timeout=30).state == TransferState.COMPLETE
    assert hub.done.wait(10)
    assert hub.completed["u-4"] == original
    assert hub.receiver.assembler.rejections[RejectReason.CHUNK_CORRUPT] == 1


def test_rejected_artifact_reaches_the_sender_with_its_reason(
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    make_edge: Callable[..., Edge],
    artifact: Path,
) -> None:
    config = broker_config(chunk_size_bytes=CHUNK)
    hub = make_hub(config, reject_with=RejectedError(RejectReason.BAD_SIGNATURE, "signature does not match"))
    edge = make_edge(config, "edge-r")
    edge.outbox.submit(artifact, "u-5", edge.link.topics.edge_update("edge-r", "u-5"))
    record = edge.outbox.wait_finished("u-5", timeout=30)
    assert record.state == TransferState.REJECTED
    assert not (edge.outbox.spool_dir / "u-5.artifact").exists()
    assert record.reason is not None and "bad_signature" in record.reason
    assert hub.receiver.assembler.rejections[RejectReason.BAD_SIGNATURE] == 1
    assert hub.completed == {}


def test_receiver_asks_for_missing_chunks(
    broker_config: Callable[..., BrokerConfig], make_hub: Callable[..., Hub], artifact: Path
) -> None:
    """Chunks lost on the way are listed by the receiver in a status to the sender, then delivered."""
    config = broker_config(chunk_size_bytes=CHUNK)
    hub = make_hub(config)
    asked: list[TransferStatusMessage] = []
    got_request = threading.Event()

    def on_status(message: ReceivedMessage[TransferStatusMessage]) -> None:
        asked.append(message.payload)
        if message.payload.body.missing == [5, 6]:
            got_request.set()

    sender = MqttLink(config, role=Role.EDGE, node_id="edge-g")
    sender.subscribe(sender.topics.edge_update_statuses("edge-g"), on_status, message_type=TransferStatusMessage)
    sender.start()
    try:
        sender.wait_connected(10)
        plan = TransferPlan.for_file(artifact, "u-6", CHUNK)
        topic = sender.topics.edge_update("edge-g", "u-6")
        for index in range(plan.count):
            if index not in (5, 6):
                sender.publish(topic, plan.frame(index)).wait()
        assert got_request.wait(10), [m.body for m in asked]
        assert not hub.done.is_set()
        for index in (5, 6):
            sender.publish(topic, plan.frame(index)).wait()
        assert hub.done.wait(10)
        assert hub.completed["u-6"] == artifact.read_bytes()
    finally:
        sender.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_clean_transfer_sends_every_chunk_exactly_once(
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    make_edge: Callable[..., Edge],
    artifact: Path,
    protocol: str,
) -> None:
    """On MQTT 5 and 3.1.1. Progress reports list chunks still on their way as missing: no resends for those."""
    config = broker_config(chunk_size_bytes=CHUNK, protocol=protocol)
    hub = make_hub(config)
    edge = make_edge(config, "edge-once")
    count = TransferPlan.for_file(artifact, "u-7", CHUNK).count
    edge.outbox.submit(artifact, "u-7", edge.link.topics.edge_update("edge-once", "u-7"))
    assert edge.outbox.wait_finished("u-7", timeout=30).state == TransferState.COMPLETE
    assert hub.done.wait(10)
    assert edge.outbox.chunks_sent == count
    assert edge.outbox._sent == {} and edge.outbox._last_progress == {}  # nothing kept for an ended transfer


def test_restarted_receiver_repeats_its_verdict_to_a_sender_that_missed_it(
    broker_config: Callable[..., BrokerConfig], artifact: Path, tmp_path: Path
) -> None:
    """Otherwise a sender that missed the verdict would re-send forever after the receiver restarted."""
    config = broker_config(chunk_size_bytes=CHUNK)
    inbox_dir = tmp_path / "restart-inbox"
    plan = TransferPlan.for_file(artifact, "u-9", CHUNK)

    def receiver(link: MqttLink, done: threading.Event) -> TransferReceiver:
        return TransferReceiver(
            link,
            TransferAssembler(inbox_dir, chunk_size=CHUNK, max_total_bytes=100_000_000),
            chunk_filter=link.topics.all_updates(),
            reply_topic=lambda topic, tid: link.topics.edge_update_status(link.topics.edge_id_of(topic), tid),
            on_complete=lambda topic, tid, path: done.set(),
        )

    verdicts: list[TransferStatusMessage] = []
    sender = MqttLink(config, role=Role.EDGE, node_id="edge-v")
    sender.subscribe(
        sender.topics.edge_update_statuses("edge-v"),
        lambda m: verdicts.append(m.payload),
        message_type=TransferStatusMessage,
    )
    first_link, done = MqttLink(config, role=Role.HUB, node_id="hub"), threading.Event()
    first = receiver(first_link, done)
    for link in (sender, first_link):
        link.start()
        link.wait_connected(10)
    topic = sender.topics.edge_update("edge-v", "u-9")
    try:
        for index in range(plan.count):
            sender.publish(topic, plan.frame(index)).wait()
        assert done.wait(10)
        wait_until(lambda: any(v.body.state == TransferState.COMPLETE for v in verdicts))
        first.close()
        first_link.stop()
        verdicts.clear()

        second_link = MqttLink(config, role=Role.HUB, node_id="hub")
        second = receiver(second_link, threading.Event())
        second_link.start()
        second_link.wait_connected(10)
        try:
            sender.publish(topic, plan.frame(0)).wait()  # a late re-send after the restart
            wait_until(lambda: any(v.body.state == TransferState.COMPLETE for v in verdicts), what="repeated verdict")
        finally:
            second.close()
            second_link.stop()
    finally:
        sender.stop()


def test_submit_with_a_known_digest_skips_rehashing_and_a_wrong_one_is_caught(
    broker_config: Callable[..., BrokerConfig],
    make_hub: Callable[..., Hub],
    make_edge: Callable[..., Edge],
    artifact: Path,
    tensors: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    config = broker_config(chunk_size_bytes=CHUNK)
    hub = make_hub(config)
    edge = make_edge(config, "edge-d")
    right = file_digest(artifact)
    with pytest.raises(ValueError, match=r"2097472 bytes, but the given digest says 1$"):
        edge.outbox.submit(artifact, "u-bad-size", "x", digest=FileDigest(sha256=right.sha256, size_bytes=1))
    assert edge.outbox.record("u-bad-size") is None and artifact.exists(), "nothing queued, nothing moved"
    edge.outbox.submit(artifact, "u-d1", edge.link.topics.edge_update("edge-d", "u-d1"), digest=right)
    assert edge.outbox.wait_finished("u-d1", timeout=30).state == TransferState.COMPLETE
    assert hub.done.wait(10)
    assert_same_tensors(hub.completed["u-d1"], tensors)
    other = tmp_path / "other.artifact"
    other.write_bytes(b"\x01" * right.size_bytes)
    wrong = FileDigest(sha256="0" * 64, size_bytes=right.size_bytes)
    edge.outbox.submit(other, "u-d2", edge.link.topics.edge_update("edge-d", "u-d2"), digest=wrong)
    record = edge.outbox.wait_finished("u-d2", timeout=30)
    assert record.state == TransferState.REJECTED and "u-d2" not in hub.completed
    assert record.reason is not None and "hash_mismatch" in record.reason, "the sender learns why and stops"
