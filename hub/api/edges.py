"""Edges and the commands sent to them: ``GET /v1/edges`` (each edge's last status), ``POST
/v1/edges/{id}/commands`` (signed by the hub, role by action: ``COMMAND_ROLES``) and ``GET /v1/commands/{id}``
(the edge's acknowledgements)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from pydantic import TypeAdapter, ValidationError

from hub.api.views import CommandRequest, CommandView, EdgeView
from runtime.access import ApiRole, ApiToken
from runtime.http_errors import ApiError, error_responses, validation_detail
from schemas.base import utc_now
from schemas.messages import AckOutcome, CommandBody

if TYPE_CHECKING:
    from hub.service import HubService

_command_adapter: TypeAdapter[Any] = TypeAdapter(CommandBody)

COMMAND_ROLES: dict[str, ApiRole] = {
    "train_now": ApiRole.OPERATOR,
    "report_status": ApiRole.OPERATOR,
    "rollback": ApiRole.ADMIN,
    "pin_model": ApiRole.ADMIN,
    "set_config": ApiRole.ADMIN,
}
"""Who may send which command to an edge; an action not listed needs admin."""


def router(service: HubService, viewer: list[Any], operator_token: Callable[..., ApiToken]) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/edges", dependencies=viewer)
    def edges() -> list[EdgeView]:
        return [
            EdgeView(edge_id=e.edge_id, status=e.status, status_sent_at=e.status_sent_at, seen_at=e.seen_at)
            for e in service.edges.all()
        ]

    @routes.post("/v1/edges/{edge_id}/commands", status_code=202, responses=error_responses(403, 422))
    def send_command(
        edge_id: str,
        request: CommandRequest,
        # a default, not Annotated: the dependency is local to router(), where string annotations cannot see it
        caller: ApiToken = Depends(operator_token),  # noqa: B008
    ) -> CommandView:
        action = str(request.command.get("action", ""))
        needed = COMMAND_ROLES.get(action, ApiRole.ADMIN)
        if not caller.role.allows(needed):
            raise ApiError(
                403,
                "forbidden",
                f"the {action or '(no action)'} command needs the {needed.value} role; "
                f"{caller.name} is a {caller.role.value}",
            )
        try:
            body = _command_adapter.validate_python(
                {**request.command, "expires_at": utc_now() + timedelta(seconds=request.ttl_s)}
            )
        except ValidationError as exc:
            detail = validation_detail(exc.errors(include_url=False, include_context=False, include_input=False))
            raise ApiError(422, "bad_command", detail) from None
        try:
            command = service.commands.send(edge_id, body)
        except ValueError as exc:
            raise ApiError(422, "bad_command", str(exc)) from None
        return CommandView(command_id=command.id, edge_id=edge_id, acks=[])

    @routes.get("/v1/commands/{command_id}", dependencies=viewer)
    def command_status(command_id: str) -> dict[str, Any]:
        acks = service.commands.acks(command_id)
        final = next((a for a in acks if a.outcome != AckOutcome.ACCEPTED), None)
        return {
            "command_id": command_id,
            "acks": [a.model_dump(mode="json") for a in acks],
            "outcome": final.outcome.value if final else ("accepted" if acks else "pending"),
        }

    return routes
