"""The edge's web pages for the line operator, under /ui: the review queue by severity, and one review item at a
time with its image, its golden template and the predicted boxes, where an operator confirms the result, marks the
board good or defective, and draws, moves, resizes and deletes boxes and names each box's class.

The pages call the edge's own API (``edge.api``) from the browser with the login's session cookie and its CSRF
token (``runtime.web_sessions``), so what a person may do on a page is exactly what their token's role may do on
the API; a label records the login's name as its author. Layout, login and the HTTPS rule are ``runtime.web``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edge.buffer.labels import UnknownSampleError
from edge.inspection import InspectionService
from runtime.web import UI_PREFIX, WebPages, script_json

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "UI_PREFIX", "router"]

UI_DIR = Path(__file__).parent
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"
SEVERITY_ORDER = {"alert": 0, "uncertain": 1}
QUEUE_PAGE = 200
"""Review items listed on the queue page at once (the oldest first within each severity)."""


def router(service: InspectionService, pages: WebPages) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get(f"{UI_PREFIX}/review")
    def queue(request: Request) -> Response:
        items = sorted(
            service.buffer.samples.review_items(limit=QUEUE_PAGE),
            key=lambda item: (SEVERITY_ORDER.get(item.severity, 2), item.captured_at),
        )
        return pages.page(
            request, "queue.html", items=items, backlog=service.buffer.samples.review_backlog(), section="review"
        )

    @routes.get(f"{UI_PREFIX}/review/{{sample_id}}")
    def item(request: Request, sample_id: str) -> Response:
        try:
            view = service.buffer.samples.get(sample_id)
        except UnknownSampleError:
            return pages.page(request, "missing.html", sample_id=sample_id, section="review")
        following = [i.sample_id for i in service.buffer.samples.review_items(limit=QUEUE_PAGE)]
        sample: dict[str, Any] = {
            "sample_id": view.sample_id,
            "width": view.width,
            "height": view.height,
            "verdict": view.verdict,
            "score": view.score,
            "boxes": view.boxes,
            "classes": service.detector_classes or [],
            "has_template": view.template_sha256 is not None,
            "next": next((other for other in following if other != sample_id), None),
        }
        return pages.page(
            request,
            "item.html",
            sample=sample,
            sample_json=script_json(sample),
            section="review",
        )

    return routes
