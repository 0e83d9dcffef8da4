"""The edge's web pages for the line operator, under /ui: the live view of the latest inspections with their boxes,
verdict, score and model versions; the review queue by severity, and one review item at a time with its image, its
golden template and the predicted boxes, where an operator confirms the result, marks the board good or defective,
and draws, moves, resizes and deletes boxes and names each box's class; and the status page (health, the models
served and their providers, labels not yet trained on, the last training runs and their metrics).

The pages call the edge's own API (``edge.api``) from the browser with the login's session cookie and its CSRF
token (``runtime.web_sessions``), so what a person may do on a page is exactly what their token's role may do on
the API; a label records the login's name as its author. Layout, login and the HTTPS rule are ``runtime.web``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edge.buffer.labels import UnknownSampleError
from edge.inspection import InspectionService
from runtime.web import UI_PREFIX, WebPages, script_json

if TYPE_CHECKING:  # edge.api imports this package
    from edge.api.health import Readiness
    from edge.buffer.samples import ReviewItem
    from edge.training.scheduler import TrainingStatus

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "UI_PREFIX", "router"]

UI_DIR = Path(__file__).parent
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"
SEVERITY_ORDER = {"alert": 0, "uncertain": 1}
QUEUE_PAGE = 200
"""Review items listed on the queue page at once (the oldest first within each severity)."""
LIVE_PAGE = 24
"""Inspections on the live view (the newest first)."""
LIVE_REFRESH_S = 5
RECENT_RUNS = 10
"""Training runs listed on the status page (the newest first)."""


def router(
    service: InspectionService,
    pages: WebPages,
    *,
    readiness: Callable[[], Readiness],
    training: Callable[[], TrainingStatus] | None = None,
    training_runs: Callable[[], list[dict[str, Any]]] | None = None,
) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    samples = service.buffer.samples

    def review_queue() -> list[ReviewItem]:
        """The items in the order the queue page lists them and "next" walks them: alerts first, oldest first."""
        return sorted(
            samples.review_items(limit=QUEUE_PAGE),
            key=lambda item: (SEVERITY_ORDER.get(item.severity, 2), item.captured_at),
        )

    @routes.get(f"{UI_PREFIX}/live")
    def live(request: Request) -> Response:
        return pages.page(
            request,
            "live.html",
            inspections=samples.latest_inspections(LIVE_PAGE),
            refresh_s=LIVE_REFRESH_S,
            section="live",
        )

    @routes.get(f"{UI_PREFIX}/review")
    def queue(request: Request) -> Response:
        return pages.page(
            request, "queue.html", items=review_queue(), backlog=samples.review_backlog(), section="review"
        )

    @routes.get(f"{UI_PREFIX}/review/{{sample_id}}")
    def item(request: Request, sample_id: str) -> Response:
        try:
            view = samples.get(sample_id)
        except UnknownSampleError:
            return pages.page(request, "missing.html", sample_id=sample_id, section="review")
        following = [i.sample_id for i in review_queue()]
        after = following[following.index(sample_id) + 1 :] if sample_id in following else following
        sample: dict[str, Any] = {
            "sample_id": view.sample_id,
            "width": view.width,
            "height": view.height,
            "verdict": view.verdict,
            "score": view.score,
            "boxes": view.boxes,
            "classes": service.detector_classes or [],
            "has_template": view.template_sha256 is not None,
            "next": next((other for other in after + following if other != sample_id), None),
        }
        return pages.page(
            request,
            "item.html",
            sample=sample,
            sample_json=script_json(sample),
            section="review",
        )

    @routes.get(f"{UI_PREFIX}/status")
    def status(request: Request) -> Response:
        return pages.page(
            request,
            "status.html",
            health=readiness(),
            training=training() if training is not None else None,
            runs=(training_runs() if training_runs is not None else [])[:RECENT_RUNS],
            untrained_labels=service.buffer.labels.untrained_label_count(),
            labeled=service.buffer.labels.labeled_count(),
            section="status",
        )

    return routes
