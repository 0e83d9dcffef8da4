"""Every table of the hub's database, on one metadata (``HubBase``); ``hub.db`` owns the schema and its migrations.

A change here is a new migration in ``hub/migrations/versions`` (``docs/operations.md``, "Database migrations"):
``tests/hub/test_db.py`` fails when these classes and the migrated schema differ.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.base import utc_now


class HubBase(DeclarativeBase):
    """The hub's one metadata."""


class ModelVersionRow(HubBase):
    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    parent: Mapped[int | None]
    round_id: Mapped[str | None] = mapped_column(String(64))
    strategy: Mapped[str | None] = mapped_column(String(32))
    participants_json: Mapped[str] = mapped_column(Text, default="[]")
    num_examples: Mapped[int] = mapped_column(default=0)
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    weights_sha256: Mapped[str] = mapped_column(String(64))
    manifest_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class RoundRow(HubBase):
    __tablename__ = "rounds"

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    base_version: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime]
    deadline: Mapped[datetime]
    min_updates: Mapped[int]
    strategy: Mapped[str] = mapped_column(String(32))
    training_json: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    new_version: Mapped[int | None] = mapped_column(default=None)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)


class RoundUpdateRow(HubBase):
    __tablename__ = "round_updates"

    round_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    edge_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    transfer_id: Mapped[str] = mapped_column(String(64))
    num_examples: Mapped[int]
    norm: Mapped[float]
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[str] = mapped_column(String(16))  # accepted | rejected
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[datetime] = mapped_column(default=utc_now)


class RejectionRow(HubBase):
    """Every refused update, whatever refused it (signature, validation, round rules), for the API and audits."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utc_now)
    edge_id: Mapped[str] = mapped_column(String(64))
    round_id: Mapped[str | None] = mapped_column(String(64))
    transfer_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)


class PublishedModelRow(HubBase):
    """A model version the hub signed and broadcast: the bundle it sends again to an edge that asks for chunks."""

    __tablename__ = "published_models"

    transfer_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int]
    artifact: Mapped[str] = mapped_column(String(4096))
    total_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_size: Mapped[int]
    published_at: Mapped[datetime] = mapped_column(default=utc_now)
