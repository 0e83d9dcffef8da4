"""What the hub's API answers with: one view per resource, built from the registry's, the rounds' and the edge
directory's own records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from hub.registry import ModelVersion
from hub.rounds import RoundUpdate
from schemas.messages import RoundAnnouncementBody, RoundState, StatusBody


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


class RoundDetailView(RoundView):
    updates: list[RoundUpdate]
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


def version_view(version: ModelVersion) -> VersionView:
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


def round_view(body: RoundAnnouncementBody, reason: str | None, new_version: int | None, accepted: int) -> RoundView:
    """A round as ``RoundManager`` reports it (its announced state, failure reason, new version, accepted updates)."""
    return RoundView(
        round_id=body.round_id,
        model_name=body.model_name,
        state=body.state,
        base_version=body.base_version,
        opened_at=body.opened_at,
        deadline=body.deadline,
        min_updates=body.min_updates,
        strategy=body.strategy,
        updates_accepted=accepted,
        reason=reason,
        new_version=new_version,
    )
