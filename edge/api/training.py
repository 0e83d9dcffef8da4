"""``GET /v1/training/runs``: the edge's local training runs, newest first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


def router(training_runs: Callable[[], list[dict[str, Any]]] | None, viewer: list[Any]) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/training/runs", dependencies=viewer)
    def runs() -> list[dict[str, Any]]:
        """Local training runs, newest first: trigger, round, state (running, uploaded, failed, interrupted),
        why it ended, the update's transfer id, and the holdout metrics before and after."""
        return training_runs() if training_runs is not None else []

    return routes
