"""The edge agent process (``fedinspect edge run``): models, buffer, HTTP intake, events and status over MQTT.

Start-up loads the models (a missing or bad model stops the process with a clear error: systemd then shows it),
opens the buffer, starts the MQTT link without waiting for it (a broker that is down is reported, not fatal),
the event publisher and the HTTP server, then tells systemd READY=1. The watchdog is pinged only while inference
is healthy. SIGTERM stops intake, lets running inspections finish, sends what it can of the outbox, publishes the
retained "offline" status and closes the database.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn
from sqlalchemy import text

from edge.api import Readiness, create_app
from edge.buffer import EdgeBuffer
from edge.events import EventPublisher
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.errors import ModelLoadError
from edge.inference.pipeline import InspectionPipeline
from edge.inference.watchdog import InferenceWatchdog
from edge.inspection import InspectionService
from edge.sources import FolderSource, MqttImageSource
from fedinspect import __version__
from schemas.config import EdgeConfig
from schemas.db import sqlite_engine
from schemas.messages import Role, StatusBody
from schemas.mqtt import MqttLink
from schemas.systemd import Notifier

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0


class EdgeService:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        data = config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        if config.models.classifier is None:
            raise ModelLoadError("models.classifier is not set in the edge config: nothing to serve")
        self.watchdog = InferenceWatchdog(config.inference.watchdog_timeout_s)
        cache = data / "cache"
        classifier = Classifier.load(
            config.models.classifier, config.inference, cache_dir=cache, watchdog=self.watchdog
        )
        detector = (
            Detector.load(config.models.detector, config.inference, cache_dir=cache, watchdog=self.watchdog)
            if config.models.detector is not None
            else None
        )
        self.pipeline = InspectionPipeline(classifier, detector, config.inspection)
        self.link = MqttLink(
            config.broker,
            role=Role.EDGE,
            node_id=config.edge_id,
            software_version=__version__,
            status_provider=self._status,
        )
        self.engine = sqlite_engine(data / "buffer.db")
        self.buffer = EdgeBuffer(self.engine, data / "images", edge_id=config.edge_id)
        self.publisher = EventPublisher(self.buffer, self.link)
        self.inspection = InspectionService(
            self.pipeline,
            self.buffer,
            intake=config.intake,
            review=config.review,
            event_topic=self.link.topics.edge_events(config.edge_id),
            publisher=self.publisher,
        )
        self.folder = FolderSource(config.sources.folder, self.inspection) if config.sources.folder else None
        # Subscribed before the link starts, so the subscription is part of "connected".
        self.mqtt_images = (
            MqttImageSource(self.link, config.edge_id, self.inspection) if config.sources.mqtt_images else None
        )
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None

    # -- state for /readyz, /metrics and the retained status ----------------------------------------------------

    def _models(self) -> dict[str, dict[str, Any]]:
        inferencers: list[Classifier | Detector] = [self.pipeline.classifier]
        if self.pipeline.detector is not None:
            inferencers.append(self.pipeline.detector)
        return {
            i.name: {"version": i.version, "task": i.metadata.task.value, "provider": i.model.providers.active}
            for i in inferencers
        }

    def _database_ok(self) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(text("CREATE TEMP TABLE IF NOT EXISTS _probe(x INTEGER)"))
            return True
        except Exception as exc:  # any database failure makes the edge not ready
            self.last_error = f"database: {exc}"
            return False

    def readiness(self) -> Readiness:
        watchdog = self.watchdog.status()
        return Readiness(
            models=self._models(),
            database_ok=self._database_ok(),
            watchdog_ok=watchdog.healthy,
            watchdog_reason=watchdog.reason,
            broker_connected=self.link.connected,
        )

    def _status(self) -> StatusBody:
        return StatusBody(
            state="online",
            role=Role.EDGE,
            software_version=__version__,
            model_versions=self.pipeline.model_versions,
            execution_provider=self.pipeline.classifier.model.providers.active,
            backlogs={"outbox": self.buffer.outbox_backlog(), "review": self.buffer.review_backlog()},
            last_error=self.last_error or self.watchdog.status().reason,
        )

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.link.start()
        self.publisher.start()
        http = uvicorn.Config(
            create_app(self.inspection, readiness=self.readiness),
            host=self.config.http.host,
            port=self.config.http.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
        )
        self._http = uvicorn.Server(http)
        self._http_thread = threading.Thread(target=self._http.run, name="edge-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 10
        while not self._http.started and self._http_thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._http.started:
            raise OSError(f"HTTP server did not start on {self.config.http.host}:{self.config.http.port}")
        if self.folder is not None:
            self.folder.start()
        log.info(
            "edge ready",
            extra={
                "edge_id": self.config.edge_id,
                "address": f"{self.config.http.host}:{self.config.http.port}",
                "models": self._models(),
            },
        )

    def run(self) -> None:
        """Serve until ``stop()``."""
        self.start()
        systemd = Notifier()
        systemd.ready(f"serving {', '.join(self._models())}")
        interval = min(self.config.status_interval_s, systemd.watchdog_interval_s or 1.0, 1.0)
        last_status = last_quota = time.monotonic()
        while not self._stop.wait(interval):
            if time.monotonic() - last_quota >= self.config.buffer.quota_check_interval_s:
                last_quota = time.monotonic()
                try:
                    self.buffer.enforce_quota(self.config.buffer.max_image_bytes)
                except Exception as exc:  # a failed eviction must not stop inspection; it is reported
                    self.last_error = f"quota: {exc}"
                    log.exception("disk quota enforcement failed")
            if self.watchdog.status().healthy:
                systemd.watchdog()  # no ping while inference hangs: systemd restarts the agent
            if time.monotonic() - last_status >= self.config.status_interval_s and self.link.connected:
                last_status = time.monotonic()
                try:
                    self.link.publish_status()
                except Exception as exc:  # status is best effort; the next refresh tries again
                    log.warning("status not published", extra={"error": str(exc)})
        systemd.stopping()
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop intake, finish running inspections, flush what the broker takes of the outbox, close."""
        if self.folder is not None:
            self.folder.stop()
        if self._http is not None and self._http_thread is not None:
            self._http.should_exit = True  # uvicorn stops accepting and finishes requests in progress
            self._http_thread.join(timeout=DRAIN_TIMEOUT_S)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.link.connected and self.buffer.outbox_backlog() and time.monotonic() < deadline:
            self.publisher.notify()
            time.sleep(0.05)
        self.publisher.stop()
        self.link.stop()
        self.engine.dispose()
        log.info("edge stopped", extra={"edge_id": self.config.edge_id, "outbox_backlog": self.buffer.outbox_backlog()})
