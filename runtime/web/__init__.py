"""What the edge's and the hub's web pages share: the login and logout pages (``runtime.web_sessions``), the page
layout and style, the rule that a page bound beyond loopback is served over HTTPS only, and the templates.

Pages are server-rendered HTML (Jinja2, autoescaped) with a little plain JavaScript; every script, style and
image they use ships in these packages (``static/``), so a page loads with no request leaving the machine.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from runtime.access import ApiRole, ApiToken
from runtime.web_sessions import CSRF_FIELD, SESSION_COOKIE, WebSession, WebSessions, csrf_matches
from schemas.config import HttpConfig

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent
UI_PREFIX = "/ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
"""Pages load only from their own origin (no CDN, no inline script), and no other site may frame them."""


def is_loopback(host: str) -> bool:
    """Whether a bind address keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def script_json(value: Any) -> str:
    """``value`` as JSON safe to place inside a page's ``<script type="application/json">``: every ``<``, ``>``
    and ``&`` escaped, so no string in it (a class name, a file name) can close the element and run as HTML."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def same_origin(request: Request) -> bool:
    """False for a request a page of another site sent (its Origin header names another host); requests without
    an Origin header (not from a browser's cross-site form or script) pass."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def server_options(http: HttpConfig) -> dict[str, Any]:
    """uvicorn's address and, with ``http.tls_cert_file``, its certificate: the API and pages over HTTPS."""
    return {
        "host": http.host,
        "port": http.port,
        "ssl_certfile": None if http.tls_cert_file is None else str(http.tls_cert_file),
        "ssl_keyfile": None if http.tls_key_file is None else str(http.tls_key_file),
    }


def pages_need_https(http: HttpConfig) -> bool:
    """Pages bound beyond loopback are served over HTTPS only: an operator's PC is another host on the plant
    network, and a login cookie must not cross it in the clear."""
    return not is_loopback(http.host)


@dataclass(frozen=True)
class Viewer:
    """The person a page is rendered for."""

    session: WebSession
    token: ApiToken

    def may(self, role: ApiRole) -> bool:
        return self.token.role.allows(role)


class WebPages:
    """One process's pages: templates (the app's own ``templates_dir`` first, then the shared ones), sessions, and
    whether plain HTTP is refused (``https_only``: bound beyond loopback)."""

    def __init__(self, sessions: WebSessions, templates_dir: Path, *, title: str, https_only: bool) -> None:
        self.sessions = sessions
        self.title = title
        self.https_only = https_only
        self.environment = Environment(
            loader=ChoiceLoader([FileSystemLoader(templates_dir), FileSystemLoader(WEB_DIR / "templates")]),
            autoescape=select_autoescape(default=True),
        )

    def viewer(self, request: Request) -> Viewer | None:
        found = self.sessions.from_cookies(request.cookies)
        return None if found is None else Viewer(*found)

    def insecure(self, request: Request) -> Response | None:
        """The refusal of a page asked for over plain HTTP where only HTTPS may serve it, else None."""
        if self.https_only and request.url.scheme != "https":
            log.warning("page refused over plain HTTP", extra={"path": request.url.path})
            return HTMLResponse(
                self.render(
                    "refused.html",
                    None,
                    message="This page is served over HTTPS only: the service is "
                    "bound beyond loopback. Set http.tls_cert_file and http.tls_key_file (a certificate "
                    "from the plant CA) and open it with https://.",
                ),
                status_code=403,
            )
        return None

    def login_redirect(self, request: Request) -> RedirectResponse:
        return RedirectResponse(f"{UI_PREFIX}/login?next={quote(request.url.path)}", status_code=303)

    def render(self, template: str, viewer: Viewer | None, **context: Any) -> str:
        return self.environment.get_template(template).render(
            title=self.title,
            viewer=viewer,
            csrf_token=viewer.session.csrf_token if viewer else "",
            csrf_field=CSRF_FIELD,
            ui=UI_PREFIX,
            roles=ApiRole,
            **context,
        )

    def page(self, request: Request, template: str, needed: ApiRole = ApiRole.VIEWER, **context: Any) -> Response:
        """``template`` rendered for the logged-in viewer; the login page for a visitor without a session, 403
        for one whose role is too small, the HTTPS refusal where plain HTTP may not serve it."""
        refusal = self.insecure(request)
        if refusal is not None:
            return refusal
        viewer = self.viewer(request)
        if viewer is None:
            return self.login_redirect(request)
        if not viewer.may(needed):
            return HTMLResponse(
                self.render("refused.html", viewer, message=f"This page needs the {needed.value} role."),
                status_code=403,
            )
        return secured(HTMLResponse(self.render(template, viewer, **context)))


def secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str, home: str) -> str:
    """Only a path of these pages is followed after login (never another site)."""
    return target if target.startswith(f"{UI_PREFIX}/") and not target.startswith("//") else home


def login_router(pages: WebPages, *, home: str) -> APIRouter:
    """GET /ui (to ``home``), GET/POST /ui/login (an API token given once opens a session) and POST /ui/logout."""
    routes = APIRouter(include_in_schema=False)

    @routes.get(UI_PREFIX)
    def start() -> Response:
        return RedirectResponse(home, status_code=303)

    @routes.get(f"{UI_PREFIX}/login")
    def login_form(request: Request, next: str = home) -> Response:
        refusal = pages.insecure(request)
        if refusal is not None:
            return refusal
        return secured(HTMLResponse(pages.render("login.html", None, next=_safe_next(next, home), failed=False)))

    @routes.post(f"{UI_PREFIX}/login")
    def login(request: Request, token: str = Form(max_length=200), next: str = Form(home)) -> Response:
        refusal = pages.insecure(request)
        if refusal is not None:
            return refusal
        if not same_origin(request):  # another site logging a browser in as someone else (login CSRF)
            log.warning("cross-site web login refused", extra={"origin": request.headers.get("origin")})
            return HTMLResponse(pages.render("refused.html", None, message="Log in from this page."), 403)
        opened = pages.sessions.open(token)
        if opened is None:
            log.warning("web login with an unknown token refused", extra={"path": request.url.path})
            page = pages.render("login.html", None, next=_safe_next(next, home), failed=True)
            return secured(HTMLResponse(page, status_code=401))
        session, holder = opened
        log.info("web login", extra={"token": holder.name, "role": holder.role})
        response = RedirectResponse(_safe_next(next, home), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            max_age=int(pages.sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @routes.post(f"{UI_PREFIX}/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        viewer = pages.viewer(request)
        if viewer is not None:
            if not csrf_matches(viewer.session, csrf_token):
                return HTMLResponse(pages.render("refused.html", viewer, message="Log out from the page."), 403)
            pages.sessions.close(viewer.session.session_id)
            log.info("web logout", extra={"token": viewer.token.name})
        response = RedirectResponse(f"{UI_PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return routes


def mount_static(app: FastAPI, static_dirs: Sequence[tuple[str, Path]]) -> None:
    """The shared style and scripts at /ui/static/common, each app's own at /ui/static/<name>."""
    app.mount(f"{UI_PREFIX}/static/common", StaticFiles(directory=WEB_DIR / "static"), name="static-common")
    for name, directory in static_dirs:
        app.mount(f"{UI_PREFIX}/static/{name}", StaticFiles(directory=directory), name=f"static-{name}")
