"""Intake of one image from any source: limits, decoding, classify-then-detect, storing, the event.

Every source (HTTP, folder, MQTT) goes through ``InspectionService.inspect``. A refused input raises
``IntakeError`` with an HTTP-style status and a reason that is also counted; nothing is stored for it. A model
that compares each image with its board's golden template gets the template from ``TemplateStore`` (named by the
caller, else the configured default); it is stored with the image. At most
``intake.max_pending`` images are inspected at once; beyond that ``BusyError`` tells the caller to come back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime
from itertools import takewhile

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from edge.buffer import EdgeBuffer
from edge.buffer.images import BufferFullError, image_digest
from edge.buffer.outbox import OutgoingMessage
from edge.buffer.samples import NewInspection, SeenFile, new_sample_id
from edge.events import EventPublisher, inspection_event
from edge.inference.errors import ImageError
from edge.inference.images import decode_image
from edge.inference.pipeline import InspectionPipeline, InspectionResult
from edge.inference.templates import Template, TemplateError, TemplateStore
from schemas.base import utc_now
from schemas.config import IntakeConfig, ReviewConfig
from schemas.errors import FedinspectError
from schemas.messages import InspectionEventMessage, ReviewSeverity, Verdict

log = logging.getLogger(__name__)
RATE_HISTORY = 100_000


TEMPLATE_SETUP_REASONS = frozenset({"no_template", "unknown_template", "bad_template"})
"""Refusals that the templates folder or the configuration mends, not the image: a watched folder retries them."""


class IntakeError(FedinspectError):
    """An input was refused; ``status`` is the HTTP status that says why, ``reason`` the counter label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class BusyError(FedinspectError):
    """Too many images are being inspected; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"the edge is busy; retry after {retry_after_s} s")


@dataclass(frozen=True)
class StoredInspection:
    sample_id: str
    event: InspectionEventMessage


def review_severity(verdict: Verdict, score: float, config: ReviewConfig) -> ReviewSeverity | None:
    """Uncertain when the score is in the configured band, alert for other defective results (if enabled)."""
    if config.uncertain_low <= score < config.uncertain_high:
        return ReviewSeverity.UNCERTAIN
    if verdict == Verdict.DEFECTIVE and config.alert_defective:
        return ReviewSeverity.ALERT
    return None


def store_inspection(
    buffer: EdgeBuffer,
    image: bytes,
    result: InspectionResult,
    *,
    edge_id: str,
    source: str,
    review: ReviewConfig,
    event_topic: str,
    captured_at: datetime | None = None,
    seen: SeenFile | None = None,
    template: Template | None = None,
) -> StoredInspection:
    """Decide the review item and the event of one inspected image and store them with it, atomically
    (``BufferFullError`` before anything is written when it does not fit)."""
    sample_id = new_sample_id()
    captured = captured_at or utc_now()
    severity = review_severity(result.verdict, result.score, review)
    sha256 = image_digest(image)
    event = inspection_event(
        edge_id=edge_id,
        sample_id=sample_id,
        image_sha256=sha256,
        source=source,
        captured_at=captured,
        result=result,
        review=severity,
    )
    buffer.samples.record(
        NewInspection(
            sample_id=sample_id,
            image=image,
            image_sha256=sha256,
            result=result,
            source=source,
            captured_at=captured,
            review=severity,
            event=OutgoingMessage(event_topic, event.to_json_bytes()),
            seen=seen,
            template=template,
        )
    )
    return StoredInspection(sample_id, event)


@dataclass(frozen=True)
class Inspected:
    stored: StoredInspection
    result: InspectionResult


class InspectionService:
    """Decode, inspect, store and announce one image at a time per caller, bounded overall."""

    def __init__(
        self,
        pipeline: InspectionPipeline,
        buffer: EdgeBuffer,
        *,
        edge_id: str,
        intake: IntakeConfig,
        review: ReviewConfig,
        event_topic: str,
        publisher: EventPublisher | None = None,
        templates: TemplateStore | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.templates = templates or TemplateStore(None)
        self.buffer = buffer
        self.edge_id = edge_id
        self.intake = intake
        self.review = review
        self.event_topic = event_topic
        self.publisher = publisher
        self.refused: Counter[str] = Counter()
        self.inspected: Counter[str] = Counter()
        self.metrics_registry = CollectorRegistry()
        self._stage_seconds = Histogram(
            "fedinspect_edge_stage_seconds",
            "Wall time per pipeline stage of each inspected image.",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.metrics_registry,
        )
        self._slots = threading.BoundedSemaphore(intake.max_pending)
        self._lock = threading.Lock()
        self._pending = 0
        self._finished: deque[float] = deque(maxlen=RATE_HISTORY)  # monotonic times of inspected images

    @property
    def detector_classes(self) -> list[str] | None:
        """Class names a label's boxes may use (the detector's), or None without a detector."""
        detector = self.pipeline.detector
        return None if detector is None else list(detector.metadata.classes)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def rate(self, window_s: float) -> float:
        """Images inspected per second over the last ``window_s`` seconds (the load the training gate reads)."""
        since = time.monotonic() - window_s
        with self._lock:
            recent = sum(1 for _ in takewhile(lambda t: t >= since, reversed(self._finished)))
        return recent / window_s

    def count_refused(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(images inspected by verdict, inputs refused by reason), a consistent snapshot."""
        with self._lock:
            return dict(self.inspected), dict(self.refused)

    def _refuse(self, status: int, reason: str, message: str) -> IntakeError:
        self.count_refused(reason)
        log.warning("image refused", extra={"reason": reason, "error": message})
        return IntakeError(status, reason, message)

    def decode_for_import(self, data: bytes, *, name: str) -> np.ndarray:
        """Decode one imported label image under the intake's limits: it takes one of the ``intake.max_pending``
        slots inspection uses (waiting for one, since an import is a batch), so imports and inspections together
        never decode more than that many images at once, each within ``intake.max_decoded_bytes``."""
        with self._slots:
            return decode_image(data, source=name, max_decoded_bytes=self.intake.max_decoded_bytes)

    def inspect(
        self,
        data: bytes,
        *,
        source: str,
        name: str = "image",
        seen: SeenFile | None = None,
        template: str | None = None,
    ) -> Inspected:
        """Inspect encoded image bytes; raises IntakeError (refused, nothing stored) or BusyError.

        ``template``: id of the board's golden template (else ``inspection.default_template``); a named template
        must exist, and a model that compares with templates refuses an image without one (422).
        """
        if not self._slots.acquire(blocking=False):
            self.count_refused("busy")
            raise BusyError(retry_after_s=1)
        with self._lock:
            self._pending += 1
        try:
            return self._inspect(data, source=source, name=name, seen=seen, template_id=template)
        finally:
            with self._lock:
                self._pending -= 1
            self._slots.release()

    def _inspect(
        self, data: bytes, *, source: str, name: str, seen: SeenFile | None, template_id: str | None
    ) -> Inspected:
        if len(data) > self.intake.max_image_bytes:
            raise self._refuse(
                413,
                "too_large",
                f"{name}: {len(data)} bytes is over intake.max_image_bytes ({self.intake.max_image_bytes})",
            )
        if not data:
            raise self._refuse(400, "empty", f"{name}: empty image (0 bytes)")
        problem = self.buffer.images.storage_problem(len(data))
        if problem is not None:  # refused before it costs an inspection; nothing inspected goes unstored
            raise self._refuse(507, "buffer_full", f"{name}: not stored: {problem}")
        started = time.perf_counter()
        try:
            image = decode_image(data, source=name, max_decoded_bytes=self.intake.max_decoded_bytes)
        except ImageError as exc:
            raise self._refuse(422, "undecodable", str(exc)) from None
        decode_ms = (time.perf_counter() - started) * 1000
        try:
            template = self.templates.resolve(template_id)
        except TemplateError as exc:
            raise self._refuse(422, exc.reason, f"{name}: {exc}") from None
        try:
            result = self.pipeline.inspect(
                image, template=None if template is None else template.image, decode_ms=decode_ms
            )
        except TemplateError as exc:
            raise self._refuse(422, exc.reason, f"{name}: {exc}") from None
        try:
            stored = store_inspection(
                self.buffer,
                data,
                result,
                edge_id=self.edge_id,
                source=source,
                review=self.review,
                event_topic=self.event_topic,
                seen=seen,
                template=template,
            )
        except BufferFullError as exc:
            raise self._refuse(507, "buffer_full", f"{name}: not stored: {exc}") from None
        with self._lock:
            self.inspected[result.verdict.value] += 1
            self._finished.append(time.monotonic())
        latency = result.latency
        for stage, ms in (
            ("decode", latency.decode_ms),
            ("classify", latency.classify_ms),
            ("detect", latency.detect_ms),
            ("total", latency.total_ms),
        ):
            if ms is not None:
                self._stage_seconds.labels(stage).observe(ms / 1000)
        if self.publisher is not None:
            self.publisher.notify()
        log.info(
            "image inspected",
            extra={
                "sample_id": stored.sample_id,
                "source": source,
                "template_id": None if template is None else template.template_id,
                "verdict": result.verdict.value,
                "score": round(result.score, 4),
                "total_ms": round(result.latency.total_ms, 2),
            },
        )
        return Inspected(stored, result)
