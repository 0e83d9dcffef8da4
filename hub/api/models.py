"""Model lines: ``GET /v1/models`` (every version with its lineage, round and participants) and
``POST /v1/models/{name}/rollback`` (admin: a new version with an earlier one's weights, queued for publication)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from hub.api.views import RollbackRequest, VersionView, version_view
from runtime.http_errors import ApiError, error_responses

if TYPE_CHECKING:
    from hub.service import HubService


def router(service: HubService, viewer: list[Any], admin: list[Any]) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/models", dependencies=viewer)
    def models() -> dict[str, list[VersionView]]:
        registry = service.registry
        return {name: [version_view(v) for v in registry.versions(name)] for name in registry.model_names()}

    @routes.post("/v1/models/{name}/rollback", dependencies=admin, responses=error_responses(404, 422))
    def rollback(name: str, request: RollbackRequest) -> VersionView:
        try:
            version = service.rollback(name, request.to_version)
        except KeyError as exc:
            raise ApiError(404, "unknown_version", str(exc.args[0])) from None
        return version_view(version)

    return routes
