"""Rounds and refused updates: ``GET /v1/rounds``, ``GET /v1/rounds/{id}`` (with every update and the edges'
holdout metrics), ``GET /v1/rejections``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from hub.api.views import RejectionView, RoundDetailView, RoundView, round_view
from hub.rounds import weighted_metrics
from runtime.http_errors import ApiError, error_responses

if TYPE_CHECKING:
    from hub.service import HubService


def router(service: HubService, viewer: list[Any]) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/rounds", dependencies=viewer)
    def rounds() -> list[RoundView]:
        return [round_view(*entry) for entry in service.rounds.all_rounds()]

    @routes.get("/v1/rounds/{round_id}", dependencies=viewer, responses=error_responses(404))
    def round_detail(round_id: str) -> RoundDetailView:
        """One round with every update it received and the edges' local holdout metrics before and after
        training (each, and their mean weighted by examples)."""
        try:
            body, reason, version = service.rounds.round(round_id)
            updates = service.rounds.round_updates(round_id)
        except KeyError:
            raise ApiError(404, "unknown_round", f"no round {round_id!r}") from None
        accepted = sum(u.status == "accepted" for u in updates)
        return RoundDetailView(
            **round_view(body, reason, version, accepted).model_dump(),
            updates=updates,
            metrics_before=weighted_metrics(updates, "before"),
            metrics_after=weighted_metrics(updates, "after"),
        )

    @routes.get("/v1/rejections", dependencies=viewer)
    def rejections() -> list[RejectionView]:
        return [
            RejectionView(edge_id=e, round_id=r, reason=reason, detail=d)
            for e, r, reason, d in service.rounds.rejections()
        ]

    return routes
