"""Fixtures for edge <-> hub exchanges over the real broker: links, keys, and cleanup."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, SigningKey, generate_key_pair
from schemas.config import BrokerConfig
from schemas.messages import Role


@pytest.fixture
def links() -> Iterator[Callable[..., MqttLink]]:
    """Build links (started unless start=False); all are stopped at the end of the test."""
    made: list[MqttLink] = []

    def make(config: BrokerConfig, role: Role, node_id: str, *, start: bool = True) -> MqttLink:
        link = MqttLink(config, role=role, node_id=node_id)
        made.append(link)
        if start:
            link.start()
            link.wait_connected(10)
        return link

    yield make
    for link in made:
        link.stop(timeout=2)


@pytest.fixture
def closers() -> Iterator[list[Any]]:
    """Objects with close() to close at the end of the test, after use (receivers, publishers, outboxes)."""
    items: list[Any] = []
    yield items
    for item in reversed(items):
        (item.stop if hasattr(item, "stop") else item.close)()


@pytest.fixture
def keys(tmp_path: Path) -> Callable[[str], SigningKey]:
    """Key pairs by id under tmp_path/keys; the hub's enrolled-edge ring and the edges' pinned hub key read it."""

    def make(key_id: str, directory: str = "keys") -> SigningKey:
        private, _ = generate_key_pair(key_id, tmp_path / directory)
        return SigningKey.load(private)

    return make


@pytest.fixture
def ring(tmp_path: Path) -> Callable[[], KeyRing]:
    return lambda: KeyRing.from_directory(tmp_path / "keys")
