"""The edge's HTTP API (127.0.0.1 by default): inspect an image, health, readiness and Prometheus metrics.

``POST /v1/inspect`` takes the image as the raw body (``Content-Type: image/*`` or ``application/octet-stream``)
or as the ``image`` field of a multipart form (``?template=ID`` names the board's golden template where a model
compares with it), and answers the inspection result (the event body). Refused inputs
get a 4xx naming the reason; a full intake answers 503 with ``Retry-After``. The OpenAPI spec is at
``/openapi.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edge.buffer import BufferFullError, UnknownSampleError
from edge.inference.templates import Template, TemplateError
from edge.inspection import BusyError, InspectionService, IntakeError
from edge.labels import (
    LabelFileError,
    LabelFormat,
    is_deeppcb_template,
    label_stem,
    pair_stem,
    parse_deeppcb,
    parse_yolo,
)
from edge.training.scheduler import TrainingStatus
from runtime.access import ApiRole, TokenStore
from runtime.http_access import (
    DEFAULT_BODY_LIMIT,
    BodyLimit,
    BodyTooLargeError,
    api_guard,
    trusted_host_middleware,
)
from runtime.version import __version__
from schemas.base import IDENTIFIER_PATTERN
from schemas.messages import InspectionEventBody, Verdict

RAW_TYPES = ("application/octet-stream",)


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


class ErrorBody(BaseModel):
    detail: str
    reason: str


class ReviewItemView(BaseModel):
    sample_id: str
    severity: str
    verdict: str
    score: float
    boxes: list[dict[str, Any]]
    source: str
    captured_at: datetime


class LabelBox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    x2: float = Field(ge=0)
    y2: float = Field(ge=0)
    class_name: str = Field(min_length=1, max_length=200)


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    boxes: list[LabelBox] = Field(default_factory=list, max_length=1000)
    author: str = Field(min_length=1, max_length=128)


class LabelAccepted(BaseModel):
    label_id: int
    sample_id: str


def _label_problems(request: LabelRequest, width: int, height: int, classes: list[str] | None) -> list[str]:
    problems = []
    if request.verdict == Verdict.GOOD and request.boxes:
        problems.append("a good sample cannot have defect boxes")
    for index, box in enumerate(request.boxes):
        if box.x2 <= box.x1 or box.y2 <= box.y1:
            problems.append(f"box {index}: corners out of order")
        if box.x2 > width or box.y2 > height:
            problems.append(f"box {index}: outside the {width}x{height} image")
        if classes is not None and box.class_name not in classes:
            problems.append(f"box {index}: unknown class {box.class_name!r} (known: {', '.join(classes)})")
    return problems


log = logging.getLogger(__name__)

MAX_IMPORT_FILES = 2000


class ImportRefusal(BaseModel):
    file: str
    reason: str


class ImportReport(BaseModel):
    imported: int
    sample_ids: list[str]
    refused: list[ImportRefusal]


class ImportFile:
    """One uploaded file of an import, read only when it is imported (the form keeps it spooled till then)."""

    def __init__(self, name: str, file: BinaryIO, limit: int) -> None:
        self.name = name
        self._file = file
        self._limit = limit

    def read(self) -> bytes:
        """The file's bytes, at most the limit + 1 (so an oversized file is told apart without reading it all)."""
        self._file.seek(0)
        return self._file.read(self._limit + 1)


def _pair_templates(images: list[ImportFile], fmt: LabelFormat) -> dict[str, ImportFile]:
    """DeepPCB uploads: each board's template file by board (its test image is compared with it)."""
    if fmt != LabelFormat.DEEPPCB:
        return {}
    return {pair_stem(item.name): item for item in images if is_deeppcb_template(item.name)}


def _import_template(
    service: InspectionService, name: str, image: Any, pair_template: ImportFile | None, template_id: str | None
) -> Template | None:
    """The golden template an imported image is stored with: its DeepPCB pair's template, else the named (or
    default) one; ``TemplateError`` if it cannot be used, or is missing where the served models need one."""
    from edge.inference.errors import ImageError
    from edge.inference.images import check_template_size

    template: Template | None
    try:
        if pair_template is not None:
            data = pair_template.read()
            template = Template(None, data, service.decode_for_import(data, name=f"{name}'s pair template"))
        else:
            template = service.templates.resolve(template_id)
        if template is None:
            if service.pipeline.needs_template:
                raise TemplateError(
                    "no_template",
                    "the served models compare with golden templates; name one (form field 'template') or upload "
                    "DeepPCB pairs",
                )
            return None
        check_template_size(image, template.image, source=name)
    except ImageError as exc:
        raise TemplateError("template_mismatch", str(exc)) from None
    return template


def _import(
    service: InspectionService,
    images: list[ImportFile],
    label_texts: dict[str, str],
    fmt: LabelFormat,
    classes: list[str],
    author: str,
    template_id: str | None = None,
) -> ImportReport:
    from edge.inference.errors import ImageError

    parse = parse_yolo if fmt == LabelFormat.YOLO else parse_deeppcb
    sample_ids: list[str] = []
    refused: list[ImportRefusal] = []
    pair_templates = _pair_templates(images, fmt)
    for item in images:  # one file in memory at a time
        name, data = item.name, item.read()
        if len(data) > service.intake.max_image_bytes:
            refused.append(
                ImportRefusal(file=name, reason=f"over intake.max_image_bytes ({service.intake.max_image_bytes})")
            )
            continue
        try:
            decoded = service.decode_for_import(data, name=name)
        except ImageError as exc:
            refused.append(ImportRefusal(file=name, reason=str(exc)))
            continue
        height, width = decoded.shape[:2]
        stem = label_stem(name, fmt)
        text = label_texts.get(stem)
        if text is None and not (fmt == LabelFormat.DEEPPCB and is_deeppcb_template(name)):
            refused.append(ImportRefusal(file=name, reason=f"no label file {stem}.txt"))
            continue
        if fmt == LabelFormat.DEEPPCB and is_deeppcb_template(name):
            text = ""  # a template is the defect-free image of its pair
        try:
            label = parse(text or "", name=f"{stem}.txt", width=width, height=height, classes=classes)
            template = _import_template(service, name, decoded, pair_templates.get(pair_stem(name)), template_id)
        except (LabelFileError, TemplateError) as exc:
            refused.append(ImportRefusal(file=name, reason=str(exc)))
            continue
        try:
            sample_id = service.buffer.import_labeled(
                data,
                width=width,
                height=height,
                verdict=label.verdict,
                boxes=label.boxes,
                author=author,
                split_key=f"import:{pair_stem(name)}",
                template=template,
            )
        except BufferFullError as exc:
            refused.append(ImportRefusal(file=name, reason=f"not stored: {exc}"))
            continue
        sample_ids.append(sample_id)
    return ImportReport(imported=len(sample_ids), sample_ids=sample_ids, refused=refused)


def render_sample(data: bytes, boxes: list[dict[str, Any]]) -> bytes:
    """The image as PNG with boxes and class names drawn (OpenCV's built-in font: nothing to download)."""
    import cv2

    from edge.inference.images import decode_image

    image = decode_image(data)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for box in boxes:
        top_left = (int(box["x1"]), int(box["y1"]))
        cv2.rectangle(image, top_left, (int(box["x2"]), int(box["y2"])), (0, 0, 255), 2)
        caption = f"{box.get('class_name', '')} {float(box.get('score', 1.0)):.2f}"
        cv2.putText(
            image,
            caption,
            (top_left[0], max(10, top_left[1] - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 255),
            1,
            cv2.LINE_AA,
        )
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return bytes(encoded)


MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a multipart body may hold beyond its file (boundaries, part headers, small fields)."""


def create_app(
    service: InspectionService,
    *,
    readiness: Callable[[], Readiness],
    tokens: TokenStore,
    trusted_hosts: list[str],
    training: Callable[[], TrainingStatus] | None = None,
    training_runs: Callable[[], list[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The edge's API. Every path but the probes needs a token (``runtime.access``): viewer to read the review
    queue, samples and training runs; operator to inspect, label and import."""
    app = FastAPI(title="fedinspect edge", version=__version__)
    intake = service.intake
    guard = api_guard(tokens)
    viewer, operator = [Depends(guard(ApiRole.VIEWER))], [Depends(guard(ApiRole.OPERATOR))]

    def body_limit(path: str) -> int:
        if path == "/v1/inspect":
            return intake.max_image_bytes + MULTIPART_OVERHEAD
        if path == "/v1/labels/import":
            return intake.max_import_bytes
        return DEFAULT_BODY_LIMIT

    def refused(path: str) -> None:
        if path == "/v1/inspect":  # counted with the intake's other refusals (fedinspect_edge_inputs_refused)
            service.count_refused("too_large")

    app.add_middleware(BodyLimit, limit_for=body_limit, on_refused=refused)
    trusted_host_middleware(app, trusted_hosts)  # added last, so it runs first

    @app.post(
        "/v1/inspect",
        dependencies=operator,
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
    async def inspect(
        request: Request,
        template: Annotated[
            str | None,
            Query(
                description="Id of the board's golden template in inspection.templates_dir (default: "
                "inspection.default_template); needed by models that compare with the template.",
                max_length=64,
            ),
        ] = None,
    ) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        name = "upload"
        if content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=4)
            except BodyTooLargeError:
                raise
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
            inspected = await run_in_threadpool(service.inspect, data, source="http", name=name, template=template)
        except BusyError as exc:
            return JSONResponse(
                {"detail": str(exc), "reason": "busy"},
                status_code=503,
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        except IntakeError as exc:
            return _error(exc.status, exc.reason, str(exc))
        return inspected.stored.event.body.model_dump(mode="json")

    @app.get("/v1/review", response_model=list[ReviewItemView], dependencies=viewer)
    def review(
        severity: Literal["alert", "uncertain"] | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Any:
        """Pending review items, oldest first."""
        return [ReviewItemView(**vars(item)) for item in service.buffer.review_items(limit=limit, severity=severity)]

    @app.get(
        "/v1/samples/{sample_id}/image",
        dependencies=viewer,
        responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorBody}, 410: {"model": ErrorBody}},
        response_class=Response,
    )
    def sample_image(sample_id: Annotated[str, Path(pattern=IDENTIFIER_PATTERN)], boxes: bool = True) -> Response:
        """The stored image as PNG, with the predicted boxes drawn unless boxes=false."""
        try:
            view = service.buffer.sample(sample_id)
        except UnknownSampleError as exc:
            return _error(404, "unknown_sample", str(exc))
        image_file = service.buffer.image_path(view.sha256)
        if not image_file.is_file():
            return _error(410, "image_evicted", f"the image of {sample_id} was evicted under the disk quota")
        return Response(render_sample(image_file.read_bytes(), view.boxes if boxes else []), media_type="image/png")

    @app.post(
        "/v1/samples/{sample_id}/label",
        dependencies=operator,
        response_model=LabelAccepted,
        responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    def label(sample_id: Annotated[str, Path(pattern=IDENTIFIER_PATTERN)], request: LabelRequest) -> Any:
        """Confirm or correct a result: the verdict and, for defects, the boxes (class names of the detector)."""
        try:
            view = service.buffer.sample(sample_id)
        except UnknownSampleError as exc:
            return _error(404, "unknown_sample", str(exc))
        problems = _label_problems(request, view.width, view.height, service.detector_classes)
        if problems:
            return _error(422, "bad_label", "; ".join(problems))
        label_id = service.buffer.add_label(
            sample_id,
            verdict=request.verdict.value,
            boxes=[b.model_dump() for b in request.boxes],
            source="operator",
            author=request.author,
        )
        return LabelAccepted(label_id=label_id, sample_id=sample_id)

    @app.post(
        "/v1/labels/import",
        dependencies=operator,
        response_model=ImportReport,
        responses={400: {"model": ErrorBody}, 422: {"model": ErrorBody}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "format": {"type": "string", "enum": ["yolo", "deeppcb"]},
                                "author": {"type": "string"},
                                "template": {"type": "string", "description": "golden template id of the images"},
                                "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                "labels": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            },
                            "required": ["format", "author", "images"],
                        }
                    }
                },
            }
        },
    )
    async def import_labels(request: Request) -> Any:
        """Bulk-import labeled images: YOLO txt (class cx cy w h) or DeepPCB txt (x1 y1 x2 y2 type) files,
        matched to images by name. Each file is imported or refused on its own; the report says which and why.
        Each image is stored with its golden template: a DeepPCB pair's own template file, else the template the
        'template' field names (default: inspection.default_template).
        """
        classes = service.detector_classes
        if classes is None:
            return _error(422, "no_detector", "label import needs the detector's class names; no detector is loaded")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
            return _error(400, "bad_form", "send a multipart form with format, author, images and labels")
        try:
            form = await request.form(max_files=MAX_IMPORT_FILES, max_fields=8)
        except BodyTooLargeError:
            raise
        except Exception:  # malformed multipart bodies raise parser-specific errors
            return _error(400, "bad_form", f"malformed multipart body (at most {MAX_IMPORT_FILES} files)")
        fmt_value, author = form.get("format"), form.get("author")
        if fmt_value not in ("yolo", "deeppcb") or not isinstance(author, str) or not author.strip():
            return _error(400, "bad_form", "format must be 'yolo' or 'deeppcb' and author must be given")
        fmt = LabelFormat(str(fmt_value))
        template_field = form.get("template")
        if template_field is not None and not isinstance(template_field, str):
            return _error(400, "bad_form", "template must be a template id, not a file")
        label_texts: dict[str, str] = {}
        for item in form.getlist("labels"):
            if isinstance(item, str):
                continue
            raw = await item.read(1024 * 1024 + 1)
            name = item.filename or "labels.txt"
            label_texts[name.rsplit(".", 1)[0]] = raw.decode("utf-8", errors="replace")
        images = [
            ImportFile(item.filename or "image", item.file, service.intake.max_image_bytes)
            for item in form.getlist("images")
            if not isinstance(item, str)
        ]
        return await run_in_threadpool(
            _import, service, images, label_texts, fmt, classes, author.strip()[:128], template_field or None
        )

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
            "storage_problem": state.storage_problem,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/v1/training/runs", dependencies=viewer)
    def runs() -> list[dict[str, Any]]:
        """Local training runs, newest first: trigger, round, state (running, uploaded, failed, interrupted),
        why it ended, the update's transfer id, and the holdout metrics before and after."""
        return training_runs() if training_runs is not None else []

    registry = CollectorRegistry()
    registry.register(_EdgeCollector(service, readiness, training))

    @app.get("/metrics")
    def metrics() -> Response:
        exposition = generate_latest(registry) + generate_latest(service.metrics_registry)
        return Response(exposition, media_type=CONTENT_TYPE_LATEST)

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
            value=service.buffer.outbox_backlog(),
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_buffer_image_bytes",
            "Bytes of images kept in the buffer.",
            value=service.buffer.image_bytes(),
        )
        yield GaugeMetricFamily(
            "fedinspect_edge_buffer_full",
            "1 while new images are refused (507): the buffer's hard cap reached or the disk at its free-space floor.",
            value=0.0 if service.buffer.storage_problem() is None else 1.0,
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
