"""One error body for both HTTP APIs: ``{"detail": what went wrong, in words, "reason": one stable word}``.

A client (the operator console, a line PLC bridge, a script) tells errors apart by ``reason`` and shows ``detail``;
the edge and the hub answered in two shapes before (``{detail, reason}`` and FastAPI's bare ``{detail}``, whose
validation errors are a list). Handlers raise ``ApiError`` (or FastAPI's ``HTTPException``, whose status then
names the reason); ``install_error_handlers`` turns both, request-validation errors and unknown routes into this
body, and the host check and the body-size limit (``runtime.http_access``) answer in it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    """What every refused request of the edge's or the hub's API gets back."""

    detail: str = Field(description="What went wrong and, where it helps, what to send instead.")
    reason: str = Field(description="A stable word for the kind of error, e.g. unknown_sample, bad_form, forbidden.")


STATUS_REASONS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "content_type",
    422: "invalid_request",
    503: "unavailable",
    507: "storage_full",
}
"""The reason of an error raised with a status only (``HTTPException``, FastAPI's own 404 and 405)."""


class ApiError(Exception):
    """A refused request: its status, reason word, detail and any headers (e.g. Retry-After)."""

    def __init__(self, status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=detail, reason=reason).model_dump(), status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries naming ``ErrorBody`` for these statuses."""
    return {status: {"model": ErrorBody} for status in statuses}


def validation_detail(errors: Sequence[Any]) -> str:
    """Pydantic / FastAPI validation errors in one line: ``body.ttl_s: Input should be greater than 0; ...``."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` answers an ``ErrorBody``."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.reason, exc.detail, exc.headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else validation_detail(exc.detail)
        reason = STATUS_REASONS.get(exc.status_code, "error")
        return error_response(exc.status_code, reason, detail, exc.headers)

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, STATUS_REASONS[422], validation_detail(exc.errors()))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
