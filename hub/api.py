"""The hub's HTTP API (127.0.0.1 by default): edges, rounds, models, rejections, commands, health, metrics.

The OpenAPI spec is served at /openapi.json. Nothing here changes state except POSTing a command to an edge or a
rollback of a model line.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from hub.rounds import weighted_metrics
from runtime.access import ApiRole, ApiToken, TokenStore
from runtime.http_access import DEFAULT_BODY_LIMIT, BodyLimit, api_guard, trusted_host_middleware
from runtime.version import __version__
from schemas.base import utc_now
from schemas.messages import AckOutcome, CommandBody, RoundState, StatusBody

if TYPE_CHECKING:
    from hub.registry import ModelVersion
    from hub.service import HubService

_command_adapter: TypeAdapter[Any] = TypeAdapter(CommandBody)


class EdgeView(BaseModel):
    edge_id: str
    status: StatusBody
    status_sent_at: datetime
    seen_at: datetime


class RoundView(BaseModel):
    round_id: str
    model_name: str
    state: RoundState
    base_version: int
    opened_at: datetime
    deadline: datetime
    min_updates: int
    strategy: str
    updates_accepted: int
    reason: str | None
    new_version: int | None


class RoundUpdateView(BaseModel):
    edge_id: str
    status: str
    reason: str | None
    num_examples: int
    norm: float
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    received_at: datetime


class RoundDetailView(RoundView):
    updates: list[RoundUpdateView]
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]


class VersionView(BaseModel):
    name: str
    version: int
    parent: int | None
    round_id: str | None
    strategy: str | None
    participants: list[str]
    num_examples: int
    metrics: dict[str, float]
    created_at: datetime


class RejectionView(BaseModel):
    edge_id: str
    round_id: str | None
    reason: str
    detail: str


class CommandRequest(BaseModel):
    command: dict[str, Any] = Field(description="The command without expires_at, e.g. {'action': 'train_now', ...}.")
    ttl_s: float = Field(300.0, gt=0, le=7 * 24 * 3600, description="Seconds until the command expires.")


class CommandView(BaseModel):
    command_id: str
    edge_id: str
    acks: list[dict[str, Any]]


class RollbackRequest(BaseModel):
    to_version: Annotated[int, Field(ge=0, description="Version to make current again.")]


class _HubCollector:
    """Reads the hub's state at scrape time; nothing is counted twice or kept in globals."""

    def __init__(self, service: HubService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        rejections = CounterMetricFamily("fedinspect_hub_rejections", "Updates refused, by reason", labels=["reason"])
        for reason, count in service.rounds.rejection_counts().items():
            rejections.add_metric([reason], count)
        yield rejections
        chunks = CounterMetricFamily(
            "fedinspect_hub_transfer_rejections", "Chunks and artifacts refused, by reason", labels=["reason"]
        )
        for reason, count in service.inbox.rejections.items():
            chunks.add_metric([reason], count)
        yield chunks
        rounds = GaugeMetricFamily("fedinspect_hub_rounds", "Rounds by state", labels=["state"])
        counts: dict[str, int] = {state.value: 0 for state in RoundState}
        for body, *_ in service.rounds.all_rounds():
            counts[body.state.value] += 1
        for state, count in counts.items():
            rounds.add_metric([state], count)
        yield rounds
        versions = GaugeMetricFamily("fedinspect_hub_model_version", "Latest global version", labels=["model"])
        for name in service.registry.model_names():
            versions.add_metric([name], service.registry.latest_version(name) or 0)
        yield versions
        yield GaugeMetricFamily(
            "fedinspect_hub_edges_online", "Edges whose last status is online", value=service.edges.online_count()
        )
        stats = service.link.stats
        for name in (
            "connects",
            "disconnects",
            "messages_received",
            "messages_invalid",
            "handler_errors",
            "publishes",
            "publishes_denied",
            "publishes_oversize",
        ):
            yield CounterMetricFamily(
                f"fedinspect_mqtt_{name}", f"MQTT link: {name.replace('_', ' ')}", value=getattr(stats, name)
            )
        yield GaugeMetricFamily(
            "fedinspect_mqtt_connected", "1 while connected to the broker", value=1 if service.link.connected else 0
        )


COMMAND_ROLES: dict[str, ApiRole] = {
    "train_now": ApiRole.OPERATOR,
    "report_status": ApiRole.OPERATOR,
    "rollback": ApiRole.ADMIN,
    "pin_model": ApiRole.ADMIN,
    "set_config": ApiRole.ADMIN,
}
"""Who may send which command to an edge; an action not listed needs admin."""


def create_app(service: HubService, *, tokens: TokenStore, trusted_hosts: list[str]) -> FastAPI:
    """The hub's API. Every path but the probes needs a token (``runtime.access``): viewer to read edges, rounds,
    models, refusals and commands; operator to ask edges to train or report; admin to roll back, pin and
    reconfigure."""
    app = FastAPI(title="fedinspect hub", version=__version__)
    app.add_middleware(BodyLimit, limit_for=lambda _path: DEFAULT_BODY_LIMIT)
    trusted_host_middleware(app, trusted_hosts)  # added last, so it runs first
    metrics = CollectorRegistry()
    metrics.register(_HubCollector(service))
    guard = api_guard(tokens)
    viewer, admin = [Depends(guard(ApiRole.VIEWER))], [Depends(guard(ApiRole.ADMIN))]
    operator_token = guard(ApiRole.OPERATOR)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "broker_connected": service.link.connected}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/edges", dependencies=viewer)
    def edges() -> list[EdgeView]:
        return [
            EdgeView(edge_id=e.edge_id, status=e.status, status_sent_at=e.status_sent_at, seen_at=e.seen_at)
            for e in service.edges.all()
        ]

    @app.get("/v1/rounds", dependencies=viewer)
    def rounds() -> list[RoundView]:
        return [
            RoundView(
                round_id=b.round_id,
                model_name=b.model_name,
                state=b.state,
                base_version=b.base_version,
                opened_at=b.opened_at,
                deadline=b.deadline,
                min_updates=b.min_updates,
                strategy=b.strategy,
                updates_accepted=accepted,
                reason=reason,
                new_version=version,
            )
            for b, reason, version, accepted in service.rounds.all_rounds()
        ]

    @app.get("/v1/rounds/{round_id}", dependencies=viewer)
    def round_detail(round_id: str) -> RoundDetailView:
        """One round with every update it received and the edges' local holdout metrics before and after
        training (each, and their mean weighted by examples)."""
        try:
            body, reason, version = service.rounds.round(round_id)
            updates = service.rounds.round_updates(round_id)
        except KeyError:
            raise HTTPException(404, f"no round {round_id!r}") from None
        return RoundDetailView(
            round_id=body.round_id,
            model_name=body.model_name,
            state=body.state,
            base_version=body.base_version,
            opened_at=body.opened_at,
            deadline=body.deadline,
            min_updates=body.min_updates,
            strategy=body.strategy,
            updates_accepted=sum(u.status == "accepted" for u in updates),
            reason=reason,
            new_version=version,
            updates=[RoundUpdateView(**vars(u)) for u in updates],
            metrics_before=weighted_metrics(updates, "before"),
            metrics_after=weighted_metrics(updates, "after"),
        )

    @app.get("/v1/models", dependencies=viewer)
    def models() -> dict[str, list[VersionView]]:
        return {
            name: [_version_view(v) for v in service.registry.versions(name)] for name in service.registry.model_names()
        }

    @app.post("/v1/models/{name}/rollback", dependencies=admin)
    def rollback(name: str, request: RollbackRequest) -> VersionView:
        try:
            version = service.rollback(name, request.to_version)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        return _version_view(version)

    @app.get("/v1/rejections", dependencies=viewer)
    def rejections() -> list[RejectionView]:
        return [
            RejectionView(edge_id=e, round_id=r, reason=reason, detail=d)
            for e, r, reason, d in service.rounds.rejections()
        ]

    @app.post("/v1/edges/{edge_id}/commands", status_code=202)
    def send_command(
        edge_id: str,
        request: CommandRequest,
        # a default, not Annotated: the dependency is local to create_app, where string annotations cannot see it
        caller: ApiToken = Depends(operator_token),  # noqa: B008
    ) -> CommandView:
        action = str(request.command.get("action", ""))
        needed = COMMAND_ROLES.get(action, ApiRole.ADMIN)
        if not caller.role.allows(needed):
            raise HTTPException(
                403,
                f"the {action or '(no action)'} command needs the {needed.value} role; "
                f"{caller.name} is a {caller.role.value}",
            )
        try:
            body = _command_adapter.validate_python(
                {**request.command, "expires_at": utc_now() + timedelta(seconds=request.ttl_s)}
            )
        except ValidationError as exc:
            raise HTTPException(
                422, exc.errors(include_url=False, include_context=False, include_input=False)
            ) from None
        try:
            command = service.commands.send(edge_id, body)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return CommandView(command_id=command.id, edge_id=edge_id, acks=[])

    @app.get("/v1/commands/{command_id}", dependencies=viewer)
    def command_status(command_id: str) -> dict[str, Any]:
        acks = service.commands.acks(command_id)
        final = next((a for a in acks if a.outcome != AckOutcome.ACCEPTED), None)
        return {
            "command_id": command_id,
            "acks": [a.model_dump(mode="json") for a in acks],
            "outcome": final.outcome.value if final else ("accepted" if acks else "pending"),
        }

    return app


def _version_view(version: ModelVersion) -> VersionView:
    m = version.manifest
    return VersionView(
        name=m.name,
        version=m.version,
        parent=m.parent,
        round_id=version.round_id,
        strategy=version.strategy,
        participants=version.participants,
        num_examples=version.num_examples,
        metrics=version.metrics,
        created_at=m.created_at,
    )
