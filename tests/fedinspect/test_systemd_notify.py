"""sd_notify: the protocol on a real datagram socket, and the hub process announcing READY and watchdog pings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedinspect.devbroker import MosquittoBroker, free_port
from runtime.signing import generate_key_pair
from runtime.systemd import Notifier
from tests.support.waiting import drain_datagrams

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_notifier_speaks_the_protocol(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled and notifier.watchdog_interval_s == 15.0
    notifier.ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_and_no_systemd() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"fedinspect-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(100) == b"STOPPING=1"
    finally:
        sock.close()
    silent = Notifier({})
    assert not silent.enabled and silent.watchdog_interval_s is None
    silent.ready("nothing happens")


@pytest.mark.broker
def test_hub_process_reports_ready_and_pings_the_watchdog(
    broker: MosquittoBroker, topic_prefix: str, tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    generate_key_pair("hub", tmp_path / "hub" / "keys")
    config = {
        "data_dir": str(tmp_path / "hub"),
        "http": {"port": free_port()},
        "broker": {"port": broker.port, "topic_prefix": topic_prefix},
        "logging": {"level": "WARNING"},
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    hub = subprocess.Popen(
        [sys.executable, "-m", "fedinspect.cli", "hub", "run", "--config", str(tmp_path / "hub.yaml")],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages = [sock.recv(4096).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1\nSTATUS=serving 0 model line(s)")
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(20) == 0
        assert "STOPPING=1" in drain_datagrams(sock)
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
