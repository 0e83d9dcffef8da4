"""API tokens for tests: a tokens file with one holder, and the header that carries its token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.access import ApiRole, TokenStore

LOCAL_BASE_URL = "http://localhost"
"""Where in-process test clients address the APIs: a host name the default ``http.trusted_hosts`` accepts."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(tokens_file: Path, role: ApiRole = ApiRole.ADMIN, name: str = "test-admin") -> tuple[TokenStore, str]:
    """The store of ``tokens_file`` with a fresh token for ``name`` in ``role``, and that token."""
    store = TokenStore(tokens_file)
    return store, store.add(name, role)


def api_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every operation the app serves, from its OpenAPI document: the public view of
    the routes (FastAPI keeps included routers' routes out of ``app.routes``)."""
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return sorted((method.upper(), path) for path, operations in paths.items() for method in operations)
