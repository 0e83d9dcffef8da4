"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (models loaded, database, watchdog, buffer
room; 503 otherwise) and Prometheus ``/metrics``, read from the live counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edge.inspection import InspectionService
from edge.training.scheduler import TrainingStatus


@dataclass(frozen=True)
class Readiness:
    """What /readyz reports; the service fills it from the models, the buffer, the watchdog and the link."""

    models: dict[str, dict[str, Any]]
    database_ok: bool
    watchdog_ok: bool
    watchdog_reason: str | None
    broker_connected: bool
    storage_problem: str | None = None
    """Why the buffer refuses new images (hard cap, free disk), or None."""

    @property
    def ready(self) -> bool:
        return bool(self.models) and self.database_ok and self.watchdog_ok and self.storage_problem is None


def router(
    service: InspectionService,
    readiness: Callable[[], Readiness],
    training: Callable[[], TrainingStatus] | None,
) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @routes.get("/readyz")
    def readyz() -> Response:
        state = readiness()
        body = {
            "ready": state.ready,
            "models": state.models,
            "database_ok": state.database_ok,
            "watchdog_ok": state.watchdog_ok,
            "watchdog_reason": state.watchdog_reason,
            "broker_connected": state.broker_connected,
            "storage_problem": state.storage_problem,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    registry = CollectorRegistry()
    registry.register(_EdgeCollector(service, readiness, training))

    @routes.get("/metrics")
    def metrics() -> Response:
        exposition = generate_latest(registry) + generate_latest(service.metrics_registry)
        return Response(exposition, media_type=CONTENT_TYPE_LATEST)

    return routes


class _EdgeCollector:
    """Reads the live counters at scrape time (no second bookkeeping that could drift)."""

    def __init__(
        self,
        service: InspectionService,
        readiness: Callable[[], Readiness],
        training: Callable[[], TrainingStatus] | None = None,
    ) -> None:
        self.service = service
        self.readiness = readiness
        self.training = training

    def collect(self) -> Iterator[Metric]:
        service = self.service
        inspected, refused = service.counts()
        images = CounterMetricFamily("fedinspect_edge_images", "Images inspected, by verdict.", labels=["verdict"])
        for verdict in ("good", "defective"):
            images.add_metric([verdict], inspected.get(verdict, 0))
        yield images
        rejected = CounterMetricFamily(
            "fedinspect_edge_inputs_refused", "Inputs refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(refused.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily("fedinspect_edge_pending_images", "Images being inspected now.", value=service.pending)
        yield GaugeMetricFamily(
            "fedinspect_edge_outbox_backlog",
            "Events not yet acknowledged by the broker.",
            value=service.buffer.outbox.backlog(),
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_buffer_image_bytes",
            "Bytes of images kept in the buffer.",
            value=service.buffer.images.stored_bytes(),
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_buffer_full",
            "1 while new images are refused (507): the buffer's hard cap reached or the disk at its free-space floor.",
            value=0.0 if service.buffer.images.storage_problem() is None else 1.0,
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_review_backlog",
            "Review items waiting for a person.",
            value=service.buffer.samples.review_backlog(),
        )
        state = self.readiness()
        models = GaugeMetricFamily(
            "fedinspect_edge_model_version",
            "Version of each loaded model and the execution provider it runs on.",
            labels=["model", "provider"],
        )
        for name, info in sorted(state.models.items()):
            models.add_metric([name, str(info.get("provider", ""))], float(info.get("version", 0)))
        yield models
        yield GaugeMetricFamily(
            "fedinspect_edge_ready", "1 when /readyz answers 200.", value=1.0 if state.ready else 0.0
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_broker_connected",
            "1 while the MQTT link is up.",
            value=1.0 if state.broker_connected else 0.0,
        )
        if self.training is not None:
            yield from _training_metrics(self.training())


def _training_metrics(status: TrainingStatus) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "fedinspect_edge_training_running",
        "1 while a local training run is in progress.",
        value=1.0 if status.running_run else 0.0,
    )
    yield GaugeMetricFamily(
        "fedinspect_edge_training_epoch", "Epochs completed by the running training run.", value=float(status.epoch)
    )
    yield GaugeMetricFamily(
        "fedinspect_edge_training_epochs", "Epochs the running training run will do.", value=float(status.epochs)
    )
    runs = GaugeMetricFamily("fedinspect_edge_training_runs", "Training runs recorded, by state.", labels=["state"])
    for run_state in ("running", "uploaded", "failed", "interrupted"):
        runs.add_metric([run_state], float(status.runs.get(run_state, 0)))
    yield runs
    if status.last_seconds is not None:
        yield GaugeMetricFamily(
            "fedinspect_edge_training_last_duration_seconds",
            "Wall time of the last successful training run.",
            value=status.last_seconds,
        )
