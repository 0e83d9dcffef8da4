"""What the hub knows of each edge: its last retained status (online / offline from birth and last will)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from runtime.mqtt import MqttLink, ReceivedMessage
from schemas.base import utc_now
from schemas.messages import StatusBody, StatusMessage


@dataclass(frozen=True)
class EdgeState:
    edge_id: str
    status: StatusBody
    status_sent_at: datetime
    seen_at: datetime


class EdgeDirectory:
    def __init__(self, link: MqttLink) -> None:
        self._edges: dict[str, EdgeState] = {}
        self._lock = threading.Lock()
        self._topics = link.topics
        link.subscribe(link.topics.all_edge_status(), self._on_status, message_type=StatusMessage)

    def _on_status(self, message: ReceivedMessage[StatusMessage]) -> None:
        edge_id = self._topics.edge_id_of(message.topic)
        state = EdgeState(edge_id, message.payload.body, message.payload.sent_at, utc_now())
        with self._lock:
            self._edges[edge_id] = state

    def all(self) -> list[EdgeState]:
        with self._lock:
            return sorted(self._edges.values(), key=lambda e: e.edge_id)

    def online_count(self) -> int:
        return sum(1 for edge in self.all() if edge.status.state == "online")
