"""Publication runs off the round lock: while a new version's ONNX export (a child process) takes longer than
systemd's watchdog interval, the hub keeps pinging the watchdog and rounds go on; a version a stopped hub never
sent is published at its next start."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedinspect.devbroker import free_port
from hub.db import open_hub_database
from hub.model_import import import_model
from hub.models import model_transfer_id
from hub.registry import ModelRegistry
from hub.service import HubService
from hub.updates import ReceivedUpdate
from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import generate_key_pair
from schemas.config import BrokerConfig, HubConfig
from schemas.manifests import FileDigest, TensorEncoding, UpdateManifest
from schemas.messages import ModelAnnouncementMessage, Role, RoundState
from tests.support.models import small_classifier_bundle

pytestmark = [pytest.mark.broker, pytest.mark.slow]
torch = pytest.importorskip("torch")

MODEL = "pcb-classifier"
WATCHDOG_S = 1.0
"""WatchdogSec of this test's hub: systemd would kill a hub that goes this long without a ping."""


def zero_update(service: HubService, round_id: str, edge: str) -> ReceivedUpdate:
    """An honest (all-zero) update of the round's base, as the inbox hands it over once verified."""
    base = service.registry.weights(MODEL, service.rounds.round(round_id)[0].base_version)
    manifest = UpdateManifest(
        edge_id=edge,
        model_name=MODEL,
        round_id=round_id,
        base_version=service.rounds.round(round_id)[0].base_version,
        num_examples=10,
        encoding=TensorEncoding(),
        payload=FileDigest(sha256="0" * 64, size_bytes=1),
    )
    return ReceivedUpdate(f"u-{edge}-{round_id}", manifest, {k: np.zeros_like(v) for k, v in base.items()})


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def open_round(service: HubService, number: int) -> str:
    round_id = f"{MODEL}-r{number:04d}"
    wait_for(lambda: service.rounds.latest_round(MODEL) == round_id, 30, f"round {round_id} to open")
    return round_id


def test_an_export_longer_than_the_watchdog_leaves_pings_and_rounds_running(
    broker_config: Callable[..., BrokerConfig],
    links: Callable[..., MqttLink],
    notify_socket: tuple[str, socket.socket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hub.publication")
    bundle = small_classifier_bundle(tmp_path / "bundle", MODEL)
    hub_dir = tmp_path / "hub"
    generate_key_pair("hub", hub_dir / "keys")
    config = HubConfig(
        data_dir=hub_dir,
        broker=broker_config().model_dump(),
        http={"port": free_port()},
        tick_interval_s=0.1,
        rounds=[{"model_name": MODEL, "min_updates": 1, "round_duration_s": 600}],
    )
    assert import_model(config, bundle) == 0

    announced: dict[int, ModelAnnouncementMessage] = {}
    watcher = links(broker_config(), Role.EDGE, "watcher")

    def on_announcement(message: ReceivedMessage[ModelAnnouncementMessage]) -> None:
        announced[message.payload.body.manifest.version] = message.payload

    watcher.subscribe(watcher.topics.model_announce(MODEL), on_announcement, message_type=ModelAnnouncementMessage)

    path, sock = notify_socket
    sock.settimeout(0.5)
    pings: list[float] = []
    listening = threading.Event()
    listening.set()

    def listen() -> None:
        while listening.is_set():
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    service = HubService(config)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        first = open_round(service, 1)
        submitted = time.monotonic()
        service.rounds.submit(zero_update(service, first, "edge-a"))  # k = 1: aggregates and queues version 1
        assert time.monotonic() - submitted < WATCHDOG_S, "aggregation waited for the export"
        assert service.rounds.round(first)[2] == 1
        # While version 1 is exported, the next round opens, takes an update and publishes version 2.
        second = open_round(service, 2)
        service.rounds.submit(zero_update(service, second, "edge-b"))
        assert service.rounds.round(second)[0].state == RoundState.PUBLISHED
        assert service.publications.wait_idle(120)
        wait_for(lambda: 2 in announced, 30, "version 2's announcement")
    finally:
        service.stop()
        runner.join(20)
        listening.clear()
        listener.join(5)

    done = {
        r.version: r.seconds  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "model version publication done"
    }
    assert set(done) <= {1, 2} and 2 in done and service.publisher.has_published(model_transfer_id(MODEL, 2))
    exporting = max(done.values())
    assert exporting > WATCHDOG_S, f"the export took {exporting:.2f} s: too short to show anything"
    during = [t for t in pings if submitted <= t <= submitted + exporting]
    gaps = np.diff([submitted, *during, submitted + exporting])
    assert gaps.max() < WATCHDOG_S, f"the watchdog went {gaps.max():.2f} s without a ping during the export"
    assert announced[2].body.manifest.signature is not None and announced[2].body.manifest.export is not None


def test_a_version_a_stopped_hub_never_sent_is_published_at_the_next_start(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink], tmp_path: Path
) -> None:
    bundle = small_classifier_bundle(tmp_path / "bundle", MODEL)
    hub_dir = tmp_path / "hub"
    generate_key_pair("hub", hub_dir / "keys")
    config = HubConfig(
        data_dir=hub_dir, broker=broker_config().model_dump(), http={"port": free_port()}, tick_interval_s=0.1
    )
    assert import_model(config, bundle) == 0
    # A version registered while nothing published it (as a hub killed right after aggregation leaves it).
    ModelRegistry(open_hub_database(config), hub_dir / "artifacts").rollback(MODEL, 0)

    arrived = threading.Event()
    watcher = links(broker_config(), Role.EDGE, "watcher")
    watcher.subscribe(
        watcher.topics.model_announce(MODEL),
        lambda m: arrived.set() if m.payload.body.manifest.version == 1 else None,
        message_type=ModelAnnouncementMessage,
    )
    service = HubService(config)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        assert arrived.wait(120), "version 1 was never published"
        assert service.publisher.has_published(model_transfer_id(MODEL, 1))
        assert service.queue_unpublished() == []  # nothing left to send
    finally:
        service.stop()
        runner.join(20)
