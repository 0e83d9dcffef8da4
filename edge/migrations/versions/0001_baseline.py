"""The edge's buffer.db as edges kept it before Alembic, upgraded in place: every row kept.

Before this chain the buffer versioned its own tables in SQLite's ``user_version`` (1 to 6, one step each), while
the command log, the training runs and the transfer outbox created theirs with ``create_all`` on first use. This
revision does what a buffer still lacks of those steps and tables (a new file gets them all) and sets
``user_version`` to 7: releases from before the chain refuse a buffer above 6 ("written by a newer fedinspect")
instead of writing to a schema they no longer own.

What is lacking is read from the tables, columns and indexes present, not from ``user_version``: SQLite commits
each schema statement on its own (pysqlite opens no transaction for DDL), so a crash part-way through this revision
(or through an old step) leaves some of them done, and the next start must finish exactly the rest.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LOCKED_USER_VERSION = 7
"""Written by this revision so that releases before the chain refuse the file (they read at most 6)."""


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_samples() -> None:
    """The samples table as the first buffer had it; the later columns are added below."""
    op.create_table(
        "samples",
        sa.Column("sample_id", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("captured_at", _timestamp(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
    )
    op.create_index("ix_samples_sha256", "samples", ["sha256"])


def _create_predictions() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("sample_id", sa.String(64), sa.ForeignKey("samples.sample_id"), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("boxes_json", sa.Text(), nullable=False),
        sa.Column("model_versions_json", sa.Text(), nullable=False),
        sa.Column("latency_json", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
    )
    op.create_index("ix_predictions_sample_id", "predictions", ["sample_id"])


def _create_review_items() -> None:
    op.create_table(
        "review_items",
        sa.Column("sample_id", sa.String(64), sa.ForeignKey("samples.sample_id"), primary_key=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("resolved", sa.Boolean(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
    )
    op.create_index("ix_review_items_resolved", "review_items", ["resolved"])


def _create_outbox() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(512), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("sent_at", _timestamp(), nullable=True),
    )
    op.create_index("ix_outbox_sent_at", "outbox", ["sent_at"])


def _create_seen_files() -> None:
    """Old step 1 -> 2: the folder source's record of handled files."""
    op.create_table(
        "seen_files",
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("mtime_ns", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seen_at", _timestamp(), nullable=False),
    )


def _create_labels() -> None:
    """Old step 2 -> 3: labels."""
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("sample_id", sa.String(64), sa.ForeignKey("samples.sample_id"), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("boxes_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("used_in_training", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_labels_sample_id", "labels", ["sample_id"])
    op.create_index("ix_labels_used_in_training", "labels", ["used_in_training"])


def _add_sample_columns(bind: sa.Connection) -> None:
    """Old steps 3 -> 4 (eviction), 4 -> 5 (split keys) and 5 -> 6 (templates), each where it is missing."""
    inspector = sa.inspect(bind)
    columns = {column["name"] for column in inspector.get_columns("samples")}
    indexes = {index["name"] for index in inspector.get_indexes("samples")}
    if "image_evicted" not in columns:
        op.execute("ALTER TABLE samples ADD COLUMN image_evicted BOOLEAN NOT NULL DEFAULT 0")
    if "ix_samples_image_evicted" not in indexes:
        op.create_index("ix_samples_image_evicted", "samples", ["image_evicted"])
    for name, length in (("split_key", 128), ("template_id", 64), ("template_sha256", 64)):
        if name not in columns:
            op.add_column("samples", sa.Column(name, sa.String(length), nullable=True))
    if "ix_samples_template_sha256" not in indexes:
        op.create_index("ix_samples_template_sha256", "samples", ["template_sha256"])


def _create_training_runs() -> None:
    op.create_table(
        "training_runs",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("round_id", sa.String(64), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("transfer_id", sa.String(64), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=True),
        sa.Column("metrics_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_training_runs_model_name", "training_runs", ["model_name"])
    op.create_index("ix_training_runs_round_id", "training_runs", ["round_id"])


def _create_executed_commands() -> None:
    op.create_table(
        "executed_commands",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=False),
    )


def _create_outbox_transfers() -> None:
    op.create_table(
        "outbox_transfers",
        sa.Column("transfer_id", sa.String(64), primary_key=True),
        sa.Column("topic", sa.String(512), nullable=False),
        sa.Column("artifact", sa.String(4096), nullable=False),
        sa.Column("total_size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("confirmed", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


TABLES = (
    ("samples", _create_samples),
    ("predictions", _create_predictions),
    ("review_items", _create_review_items),
    ("outbox", _create_outbox),
    ("seen_files", _create_seen_files),
    ("labels", _create_labels),
    ("training_runs", _create_training_runs),
    ("executed_commands", _create_executed_commands),
    ("outbox_transfers", _create_outbox_transfers),
)
"""Every table of the buffer before the chain, in the order they came."""


def upgrade() -> None:
    bind = op.get_bind()
    user_version = int(bind.exec_driver_sql("PRAGMA user_version").scalar_one())
    if user_version > LOCKED_USER_VERSION:
        raise RuntimeError(f"buffer user_version {user_version} is not one edge/migrations starts from")
    existing = set(sa.inspect(bind).get_table_names())
    for table, create in TABLES:
        if table not in existing:
            create()
    _add_sample_columns(bind)
    op.execute(f"PRAGMA user_version = {LOCKED_USER_VERSION}")


def downgrade() -> None:
    raise NotImplementedError("the baseline is the oldest schema there is: restore a backup to go further back")
