"""The hub's web pages for the plant engineer, under /ui: the fleet (each edge online or offline from its retained
status, what it serves per line, its execution provider, when it was last seen, its backlogs), the rounds (state,
updates, each refused update with its reason), and the model lines (every version's score at each edge as a plot
over the versions, ``hub.ui.charts``; every version's lineage, round, participants and metrics, with rollback for
admins; train-now and report for operators and pin for admins on the fleet, each command's acks shown as they come).

Like the edge's pages (``edge.ui``) they are server-rendered, log in with an API token (``runtime.web``) and act
through the hub's own API with the session's CSRF token, so a page can do exactly what its login's role may.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response

from hub.ui.charts import chart, version_means, version_scores
from runtime.web import UI_PREFIX, WebPages

if TYPE_CHECKING:
    from hub.service import HubService

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "UI_PREFIX", "router"]

UI_DIR = Path(__file__).parent
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"


def router(service: HubService, pages: WebPages) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get(f"{UI_PREFIX}/fleet")
    def fleet(request: Request) -> Response:
        edges = service.edges.all()
        known = set(service.registry.model_names())
        # the hub's own lines, and any an edge serves that the registry does not hold (yet)
        lines = sorted(known | {name for edge in edges for name in edge.status.model_versions})
        versions = {  # what an admin may pin each line to, newest first
            line: sorted((v.manifest.version for v in service.registry.versions(line)), reverse=True)
            for line in lines
            if line in known
        }
        return pages.page(request, "fleet.html", edges=edges, lines=lines, versions=versions, section="fleet")

    @routes.get(f"{UI_PREFIX}/rounds")
    def rounds(request: Request) -> Response:
        entries = list(reversed(service.rounds.all_rounds()))
        updates = {body.round_id: service.rounds.round_updates(body.round_id) for body, *_ in entries}
        return pages.page(
            request,
            "rounds.html",
            rounds=entries,
            updates=updates,
            rejections=service.rounds.rejections(),
            section="rounds",
        )

    @routes.get(f"{UI_PREFIX}/models")
    def models(request: Request) -> Response:
        registry = service.registry
        lines = {name: list(reversed(registry.versions(name))) for name in registry.model_names()}
        rounds = [body for body, *_ in service.rounds.all_rounds()]
        charts = {}
        measured = {}
        for name in lines:
            scores = version_scores(name, rounds, service.rounds.round_updates)
            if scores is not None:
                charts[name] = chart(*scores)
                measured[name] = version_means(*scores)
        return pages.page(request, "models.html", lines=lines, charts=charts, measured=measured, section="models")

    return routes
