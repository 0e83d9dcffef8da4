"""What the edge's and the hub's HTTP APIs check on every request (FastAPI / ASGI): the host name it addressed, the
size of its body (before any parser or handler reads it), and the caller's token and role. Roles, tokens and their
file are in ``runtime.access``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.access import ApiRole, ApiToken, TokenStore
from runtime.http_errors import ApiError, error_response
from runtime.web_sessions import CSRF_HEADER, SAFE_METHODS, WebSessions, csrf_matches

log = logging.getLogger(__name__)

DEFAULT_BODY_LIMIT = 1024**2
"""A request body of JSON (labels, commands, rollbacks): larger is refused (413) before it is read, so a caller
without a token cannot make a process parse megabytes before it is told 401."""


def api_guard(store: TokenStore, sessions: WebSessions | None = None) -> Callable[[ApiRole], Any]:
    """``guard(role)``: a FastAPI dependency that lets a request through only with a token of at least ``role``
    (401 without a valid token, 403 with too small a role); it returns the token's entry, for the handler to name
    who acted. The token is a bearer token, or with ``sessions`` the login of the web pages' session cookie, whose
    requests that change something must also carry the session's CSRF token (403 ``csrf`` otherwise)."""

    def caller(request: Request) -> ApiToken | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return store.holder(token.strip())
        found = sessions.from_cookies(request.cookies) if sessions is not None else None
        if found is None:
            return None
        session, holder = found
        if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            log.warning("web request without its CSRF token refused", extra={"path": request.url.path})
            raise ApiError(403, "csrf", f"{request.method} {request.url.path} from a page needs its CSRF token")
        return holder

    def guard(needed: ApiRole) -> Callable[[Request], ApiToken]:
        def check(request: Request) -> ApiToken:
            holder = caller(request)
            if holder is None:
                log.warning("API request without a valid token", extra={"path": request.url.path})
                raise HTTPException(
                    401,
                    "this API needs a token: Authorization: Bearer <token> (fedinspect token add)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not holder.role.allows(needed):
                log.warning(
                    "API request refused for its role",
                    extra={"path": request.url.path, "token": holder.name, "role": holder.role, "needs": needed},
                )
                raise HTTPException(
                    403, f"{request.url.path} needs the {needed.value} role; {holder.name} is a {holder.role.value}"
                )
            return holder

        return check

    return guard


class TrustedHosts:
    """ASGI middleware: refuse (400, ``untrusted_host``) a request whose Host header is not one of
    ``allowed_hosts`` ('*' allows any): Starlette's matching (exact names, ``*.example.com``), our error body."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)
        TrustedHostMiddleware(app, allowed_hosts=self.allowed_hosts)  # refuses a malformed pattern at start-up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        passed = False

        async def through(inner_scope: Scope, inner_receive: Receive, _send: Send) -> None:
            nonlocal passed
            passed = True
            await self.app(inner_scope, inner_receive, send)

        async def swallow(_message: Message) -> None:
            return None  # Starlette's plain-text refusal; ours is sent below

        await TrustedHostMiddleware(through, allowed_hosts=self.allowed_hosts, www_redirect=False)(
            scope, receive, swallow
        )
        if not passed:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            log.warning("request for an untrusted host refused", extra={"host": host, "path": scope.get("path")})
            response = error_response(
                400, "untrusted_host", f"host {host or '(none)'!r} is not one of http.trusted_hosts of this service"
            )
            await response(scope, receive, send)


def trusted_host_middleware(app: Any, trusted_hosts: list[str]) -> None:
    """Refuse (400) requests whose Host header is not one of ``trusted_hosts`` ('*' allows any)."""
    app.add_middleware(TrustedHosts, allowed_hosts=trusted_hosts)


class BodyTooLargeError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: a request body over its path's limit is refused with 413 as soon as it is known, from its
    Content-Length or while it arrives, before a form parser spools it to memory or disk."""

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str], int], on_refused: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(limit, scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(limit, scope, receive, send)

    async def _refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("request body refused", extra={"path": scope.get("path"), "limit_bytes": limit})
        if self.on_refused is not None:
            self.on_refused(str(scope.get("path", "")))
        detail = f"request body over the limit of {limit} bytes for {scope.get('path')}"
        response = error_response(413, "too_large", detail)
        await response(scope, receive, send)
