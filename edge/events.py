"""The edge's events: what an inspection event says (``inspection_event``), and the publisher that drains the
buffer's event outbox to the broker in order, at QoS 1, marking each message sent on its PUBACK.

A broker outage only grows the backlog: while the link is down nothing is taken out of the outbox, and what was
published but not acknowledged is published again after reconnecting (at least once; every event carries its
envelope id, so a consumer can drop a repeat).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from edge.buffer import EdgeBuffer
from edge.inference.pipeline import InspectionResult
from runtime.mqtt import MqttLink
from schemas.errors import LinkError, PublishDeniedError
from schemas.messages import InspectionEventBody, InspectionEventMessage, ReviewSeverity

log = logging.getLogger(__name__)


def inspection_event(
    *,
    edge_id: str,
    sample_id: str,
    image_sha256: str,
    source: str,
    captured_at: datetime,
    result: InspectionResult,
    review: ReviewSeverity | None,
) -> InspectionEventMessage:
    """The event announcing one stored inspection to the hub and the plant's systems."""
    body = InspectionEventBody.model_validate(
        {
            "sample_id": sample_id,
            "image_sha256": image_sha256,
            "source": source,
            "captured_at": captured_at,
            "image_width": result.image_width,
            "image_height": result.image_height,
            "verdict": result.verdict,
            "score": result.score,
            "review": review,
            "boxes": list(result.boxes),
            "model_versions": result.model_versions,
            "latency": result.latency,
        }
    )
    return InspectionEventMessage(sender=edge_id, body=body)


class EventPublisher:
    """A background thread that sends the outbox in order (``window`` messages in flight at most)."""

    def __init__(self, buffer: EdgeBuffer, link: MqttLink, *, window: int = 20, idle_s: float = 0.5) -> None:
        self.buffer = buffer
        self.link = link
        self.window = window
        self.idle_s = idle_s
        self.sent = 0
        self.denied = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        """Something was added to the outbox: send it now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent_any = False
            if self.link.connected:
                try:
                    sent_any = self.drain_once()
                except LinkError as exc:  # the broker went away mid-batch: try again after reconnecting
                    log.warning("events not sent, will retry", extra={"error": str(exc)})
            if not sent_any:
                self._wake.wait(self.idle_s)
                self._wake.clear()

    def drain_once(self) -> bool:
        """Publish the next batch and mark what the broker acknowledged; True if anything was sent."""
        batch = self.buffer.outbox.pending(self.window)
        if not batch:
            return False
        handles = [(message.id, self.link.publish(message.topic, message.payload)) for message in batch]
        acknowledged: list[int] = []
        try:
            for message_id, handle in handles:
                try:
                    handle.wait()
                except PublishDeniedError as exc:
                    # The broker will never take this one (ACL); keep the order moving and say so.
                    self.denied += 1
                    log.error("event refused by the broker", extra={"outbox_id": message_id, "error": str(exc)})
                acknowledged.append(message_id)
        finally:
            self.buffer.outbox.mark_sent(acknowledged)
            self.sent += len(acknowledged)
        return True
