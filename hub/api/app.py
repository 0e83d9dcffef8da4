"""``create_app``: the hub's API wired from its routers (``hub.api``), behind the token guard, the trusted-host
check and the body limit, with one error body for every refusal (``runtime.http_errors``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from hub import ui
from hub.api import edges, health, models, rounds
from runtime.access import ApiRole, TokenStore
from runtime.http_access import DEFAULT_BODY_LIMIT, BodyLimit, api_guard, trusted_host_middleware
from runtime.http_errors import install_error_handlers
from runtime.version import __version__
from runtime.web import WebPages, login_router, mount_static
from runtime.web_sessions import WebSessions

if TYPE_CHECKING:
    from hub.service import HubService


def create_app(
    service: HubService, *, tokens: TokenStore, trusted_hosts: list[str], https_only: bool = False
) -> FastAPI:
    """The hub's API and its pages (``hub.ui``, under /ui). Every path but the probes needs a token
    (``runtime.access``), as a bearer token or through the pages' login: viewer to read edges, rounds, models,
    refusals and commands; operator to ask edges to train or report; admin to roll back, pin and reconfigure.
    With ``https_only`` (bound beyond loopback) the pages refuse plain HTTP."""
    app = FastAPI(title="fedinspect hub", version=__version__)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_for=lambda _path: DEFAULT_BODY_LIMIT)
    trusted_host_middleware(app, trusted_hosts)  # added last, so it runs first
    sessions = WebSessions(tokens)
    guard = api_guard(tokens, sessions)
    pages = WebPages(sessions, ui.TEMPLATES_DIR, title="fedinspect hub", https_only=https_only)
    viewer, admin = [Depends(guard(ApiRole.VIEWER))], [Depends(guard(ApiRole.ADMIN))]
    app.include_router(health.router(service))
    app.include_router(edges.router(service, viewer, guard(ApiRole.OPERATOR)))
    app.include_router(rounds.router(service, viewer))
    app.include_router(models.router(service, viewer, admin))
    app.include_router(login_router(pages, home=f"{ui.UI_PREFIX}/fleet"))
    app.include_router(ui.router(service, pages))
    mount_static(app, [("hub", ui.STATIC_DIR)])
    return app
