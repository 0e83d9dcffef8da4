"""``POST /v1/inspect``: one image in, the inspection result (the event body) out.

The image comes as the raw body (``Content-Type: image/*`` or ``application/octet-stream``) or as the ``image`` field
of a multipart form; ``?template=ID`` names the board's golden template where a model compares with it. Refused
inputs get a 4xx naming the reason; a full intake answers 503 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from edge.inspection import BusyError, InspectionService, IntakeError
from runtime.http_access import BodyTooLargeError
from runtime.http_errors import ApiError, error_responses
from schemas.messages import InspectionEventBody

RAW_TYPES = ("application/octet-stream",)
MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a multipart body may hold beyond its file (boundaries, part headers, small fields)."""
_BINARY = {"type": "string", "format": "binary"}


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, read up to ``limit`` bytes (enough to know it is too large; the service refuses it)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size >= limit:
            break
    return b"".join(chunks)


async def uploaded_image(request: Request, service: InspectionService) -> tuple[bytes, str]:
    """The image bytes (at most the intake's cap + 1) and its name, from a raw body or a multipart form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = service.intake.max_image_bytes + 1
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4)
        except BodyTooLargeError:
            raise
        except Exception:  # malformed multipart bodies raise parser-specific errors
            raise ApiError(400, "bad_form", "malformed multipart body") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "bad_form", "multipart body needs a file field named 'image'")
        return await upload.read(limit), upload.filename or "upload"
    if content_type.startswith("image/") or content_type in RAW_TYPES:
        return await read_limited(request, limit), "upload"
    service.count_refused("content_type")
    raise ApiError(
        415,
        "content_type",
        f"content type {content_type or '(none)'!r} is not accepted; send image/* or application/octet-stream "
        "bytes, or a multipart form with an 'image' file",
    )


def router(service: InspectionService, operator: list[Any]) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/v1/inspect",
        dependencies=operator,
        response_model=InspectionEventBody,
        responses=error_responses(400, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": _BINARY},
                    "image/png": {"schema": _BINARY},
                    "image/jpeg": {"schema": _BINARY},
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": {"image": _BINARY}, "required": ["image"]}
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
        data, name = await uploaded_image(request, service)
        try:
            inspected = await run_in_threadpool(service.inspect, data, source="http", name=name, template=template)
        except BusyError as exc:
            raise ApiError(503, "busy", str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except IntakeError as exc:
            raise ApiError(exc.status, exc.reason, str(exc)) from None
        return inspected.stored.event.body.model_dump(mode="json")

    return routes
