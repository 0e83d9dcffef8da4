"""Every table of the edge's buffer.db on one metadata (``EdgeBase``); ``edge.db`` owns the schema and its migrations.

The stores (``edge.buffer``, ``edge.commands``, ``edge.training.scheduler``) read and write these rows on the engine
``edge.db.open_edge_database`` upgraded, and create nothing themselves. The outbox of chunked transfers
(``outbox_transfers``) is declared by ``runtime.exchange``, which both processes may use, and migrated here like the
rest of the file. A schema change is a new revision in ``edge/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.base import utc_now


class EdgeBase(DeclarativeBase):
    """The declarative base of the edge's tables."""


class SampleRow(EdgeBase):
    """An inspected or imported image: its content hash names the image file under ``images/``."""

    __tablename__ = "samples"
    sample_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64))
    captured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    image_evicted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0", index=True)
    split_key: Mapped[str | None] = mapped_column(String(128), default=None)
    """Samples with the same key fall on the same side of the holdout split (e.g. a board's template and test image)."""
    template_id: Mapped[str | None] = mapped_column(String(64), default=None)
    template_sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """The golden template the image was compared with (stored like the images), so training compares with it too."""


class PredictionRow(EdgeBase):
    """What the served models said about a sample."""

    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.sample_id"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    score: Mapped[float]
    boxes_json: Mapped[str] = mapped_column(Text)
    model_versions_json: Mapped[str] = mapped_column(Text)
    latency_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewRow(EdgeBase):
    """A sample waiting for a person (uncertain score, or an alert); resolved by its first label."""

    __tablename__ = "review_items"
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.sample_id"), primary_key=True)
    severity: Mapped[str] = mapped_column(String(16))
    resolved: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxRow(EdgeBase):
    """An MQTT message written with the row it reports, sent (in order) by ``edge.events.EventPublisher``."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(512))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)


class SeenFileRow(EdgeBase):
    """A file the folder source has handled (inspected or refused), so a restart does not take it again."""

    __tablename__ = "seen_files"
    path: Mapped[str] = mapped_column(String(4096), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sample_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LabelRow(EdgeBase):
    """What a person (or an import, or the hub) says a sample shows; the newest label of a sample counts."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.sample_id"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    boxes_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_in_training: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class TrainingRunRow(EdgeBase):
    """One local training run: what triggered it, for which round, and how it ended."""

    __tablename__ = "training_runs"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    round_id: Mapped[str] = mapped_column(String(64), index=True)
    base_version: Mapped[int]
    trigger: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    transfer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    num_examples: Mapped[int | None] = mapped_column(default=None)
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")


class ExecutedCommand(EdgeBase):
    """A hub command this edge accepted, with its outcome: the record that stops a replay from running twice."""

    __tablename__ = "executed_commands"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(default=utc_now)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    result_json: Mapped[str] = mapped_column(Text, default="{}")
