"""The edge's HTTP API (127.0.0.1 by default): inspect an image, health, readiness and Prometheus metrics.

``POST /v1/inspect`` takes the image as the raw body (``Content-Type: image/*`` or ``application/octet-stream``)
or as the ``image`` field of a multipart form, and answers the inspection result (the event body). Refused inputs
get a 4xx naming the reason; a full intake answers 503 with ``Retry-After``. The OpenAPI spec is at
``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from edge.inspection import BusyError, InspectionService, IntakeError
from fedinspect import __version__
from schemas.messages import InspectionEventBody

RAW_TYPES = ("application/octet-stream",)


@dataclass(frozen=True)
class Readiness:
    """What /readyz reports; the service fills it from the models, the buffer, the watchdog and the link."""

    models: dict[str, dict[str, Any]]
    database_ok: bool
    watchdog_ok: bool
    watchdog_reason: str | None
    broker_connected: bool

    @property
    def ready(self) -> bool:
        return bool(self.models) and self.database_ok and self.watchdog_ok


class ErrorBody(BaseModel):
    detail: str
    reason: str


def create_app(
    service: InspectionService,
    *,
    readiness: Callable[[], Readiness],
) -> FastAPI:
    app = FastAPI(title="fedinspect edge", version=__version__)

    @app.post(
        "/v1/inspect",
        response_model=InspectionEventBody,
        responses={
            400: {"model": ErrorBody},
            413: {"model": ErrorBody},
            415: {"model": ErrorBody},
            422: {"model": ErrorBody},
            503: {"model": ErrorBody},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"image": {"type": "string", "format": "binary"}},
                            "required": ["image"],
                        }
                    },
                },
            }
        },
    )
    async def inspect(request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        name = "upload"
        if content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=4)
            except Exception:  # malformed multipart bodies raise parser-specific errors
                return _error(400, "bad_form", "malformed multipart body")
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return _error(400, "bad_form", "multipart body needs a file field named 'image'")
            name = upload.filename or name
            data = await upload.read(service.intake.max_image_bytes + 1)
        elif content_type.startswith("image/") or content_type in RAW_TYPES:
            data = await _read_limited(request, service.intake.max_image_bytes + 1)
        else:
            service.count_refused("content_type")
            return _error(
                415,
                "content_type",
                f"content type {content_type or '(none)'!r} is not accepted; send image/* or application/octet-stream "
                "bytes, or a multipart form with an 'image' file",
            )
        try:
            inspected = await run_in_threadpool(service.inspect, data, source="http", name=name)
        except BusyError as exc:
            return JSONResponse(
                {"detail": str(exc), "reason": "busy"},
                status_code=503,
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        except IntakeError as exc:
            return _error(exc.status, exc.reason, str(exc))
        return inspected.stored.event.body.model_dump(mode="json")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz() -> Response:
        state = readiness()
        body = {
            "ready": state.ready,
            "models": state.models,
            "database_ok": state.database_ok,
            "watchdog_ok": state.watchdog_ok,
            "watchdog_reason": state.watchdog_reason,
            "broker_connected": state.broker_connected,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    registry = CollectorRegistry()
    registry.register(_EdgeCollector(service, readiness))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size >= limit:
            break  # enough to know it is too large; the service refuses it
    return b"".join(chunks)


def _error(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status)


class _EdgeCollector:
    """Reads the live counters at scrape time (no second bookkeeping that could drift)."""

    def __init__(self, service: InspectionService, readiness: Callable[[], Readiness]) -> None:
        self.service = service
        self.readiness = readiness

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
            value=service.buffer.outbox_backlog(),
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_review_backlog",
            "Review items waiting for a person.",
            value=service.buffer.review_backlog(),
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
