"""The check the edge's and the hub's HTTP APIs run on a request (FastAPI): the caller's token and role, and the host
name it addressed. Roles, tokens and their file are in ``schemas.access``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from starlette.middleware.trustedhost import TrustedHostMiddleware

from schemas.access import ApiRole, ApiToken, TokenStore

log = logging.getLogger(__name__)


def api_guard(store: TokenStore) -> Callable[[ApiRole], Any]:
    """``guard(role)``: a FastAPI dependency that lets a request through only with a token of at least ``role``
    (401 without a valid token, 403 with too small a role); it returns the token's entry, for the handler to name
    who acted."""

    def guard(needed: ApiRole) -> Callable[[Request], ApiToken]:
        def check(request: Request) -> ApiToken:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            holder = store.holder(token.strip()) if scheme.lower() == "bearer" else None
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


def trusted_host_middleware(app: Any, trusted_hosts: list[str]) -> None:
    """Refuse (400) requests whose Host header is not one of ``trusted_hosts`` ('*' allows any)."""
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)
