"""``create_app``: the edge's API wired from its routers (``edge.api``), behind the token guard, the trusted-host
check and per-path body limits, with one error body for every refusal (``runtime.http_errors``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI

from edge import ui
from edge.api import health, inspect, labels, review
from edge.api import training as training_runs_api
from edge.api.health import Readiness
from edge.inspection import InspectionService
from edge.training.scheduler import TrainingStatus
from runtime.access import ApiRole, TokenStore
from runtime.http_access import DEFAULT_BODY_LIMIT, BodyLimit, api_guard, trusted_host_middleware
from runtime.http_errors import install_error_handlers
from runtime.version import __version__
from runtime.web import WebPages, login_router, mount_static
from runtime.web_sessions import WebSessions

__all__ = ["Readiness", "create_app"]


def create_app(
    service: InspectionService,
    *,
    readiness: Callable[[], Readiness],
    tokens: TokenStore,
    trusted_hosts: list[str],
    training: Callable[[], TrainingStatus] | None = None,
    training_runs: Callable[[], list[dict[str, Any]]] | None = None,
    https_only: bool = False,
) -> FastAPI:
    """The edge's API and its pages (``edge.ui``, under /ui). Every path but the probes needs a token
    (``runtime.access``), given as a bearer token or through the pages' login: viewer to read the review queue,
    samples and training runs; operator to inspect, label and import. With ``https_only`` (bound beyond
    loopback) the pages refuse plain HTTP."""
    app = FastAPI(title="fedinspect edge", version=__version__)
    install_error_handlers(app)
    intake = service.intake
    sessions = WebSessions(tokens)
    guard = api_guard(tokens, sessions)
    pages = WebPages(sessions, ui.TEMPLATES_DIR, title=f"fedinspect edge {service.edge_id}", https_only=https_only)
    viewer, operator = [Depends(guard(ApiRole.VIEWER))], [Depends(guard(ApiRole.OPERATOR))]

    def body_limit(path: str) -> int:
        if path == "/v1/inspect":
            return intake.max_image_bytes + inspect.MULTIPART_OVERHEAD
        if path == "/v1/labels/import":
            return intake.max_import_bytes
        return DEFAULT_BODY_LIMIT

    def refused(path: str) -> None:
        if path == "/v1/inspect":  # counted with the intake's other refusals (fedinspect_edge_inputs_refused)
            service.count_refused("too_large")

    app.add_middleware(BodyLimit, limit_for=body_limit, on_refused=refused)
    trusted_host_middleware(app, trusted_hosts)  # added last, so it runs first
    app.include_router(inspect.router(service, operator))
    app.include_router(review.router(service, viewer, operator))
    app.include_router(labels.router(service, operator))
    app.include_router(training_runs_api.router(training_runs, viewer))
    app.include_router(health.router(service, readiness, training))
    app.include_router(login_router(pages, home=f"{ui.UI_PREFIX}/review"))
    app.include_router(ui.router(service, pages, readiness=readiness, training=training, training_runs=training_runs))
    mount_static(app, [("edge", ui.STATIC_DIR)])
    return app
