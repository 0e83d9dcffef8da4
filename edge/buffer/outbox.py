"""The buffer's event outbox: MQTT messages committed with the rows they report, drained in order by
``edge.events.EventPublisher`` and marked sent on the broker's acknowledgement."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from edge.tables import OutboxRow
from schemas.base import utc_now


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to be written to the outbox in the same transaction as what it reports."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class PendingMessage:
    id: int
    topic: str
    payload: bytes


class EventOutbox:
    """The messages the edge still has to send, oldest first."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def add(session: Session, message: OutgoingMessage) -> None:
        """Queue ``message`` inside the caller's transaction: it is sent exactly when that transaction commits."""
        session.add(OutboxRow(topic=message.topic, payload=message.payload, created_at=utc_now()))

    def pending(self, limit: int) -> list[PendingMessage]:
        """The oldest unsent outbox messages, in the order they were written."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(OutboxRow).where(OutboxRow.sent_at.is_(None)).order_by(OutboxRow.id).limit(limit)
            ).all()
            return [PendingMessage(row.id, row.topic, row.payload) for row in rows]

    def mark_sent(self, ids: list[int]) -> None:
        if not ids:
            return
        with Session(self.engine) as session, session.begin():
            for row in session.scalars(select(OutboxRow).where(OutboxRow.id.in_(ids))):
                row.sent_at = utc_now()

    def backlog(self) -> int:
        """Messages not yet acknowledged by the broker."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).where(OutboxRow.sent_at.is_(None))) or 0)
