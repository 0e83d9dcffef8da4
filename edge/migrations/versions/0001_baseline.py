"""The edge's buffer.db as edges kept it before Alembic, upgraded in place: every row kept.

Before this chain the buffer versioned its own tables in SQLite's ``user_version`` (1 to 6, one step each), while
the command log, the training runs and the transfer outbox created theirs with ``create_all`` on first use. This
revision finishes the old steps a buffer still lacks (a new file starts at step 1), creates the three other tables
where they are missing, and sets ``user_version`` to 7: releases from before the chain refuse a buffer above 6
("written by a newer fedinspect") instead of writing to a schema they no longer own.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LAST_USER_VERSION = 6
"""The newest schema the buffer's own ``user_version`` steps knew."""
LOCKED_USER_VERSION = 7
"""Written by this revision so that releases before the chain refuse the file (they read at most 6)."""


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_buffer_v1() -> None:
    """What an empty buffer got first: samples, predictions, review items and the event outbox."""
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
    op.create_table(
        "review_items",
        sa.Column("sample_id", sa.String(64), sa.ForeignKey("samples.sample_id"), primary_key=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("resolved", sa.Boolean(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
    )
    op.create_index("ix_review_items_resolved", "review_items", ["resolved"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(512), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("sent_at", _timestamp(), nullable=True),
    )
    op.create_index("ix_outbox_sent_at", "outbox", ["sent_at"])


def _add_seen_files() -> None:
    """1 -> 2: the folder source's record of handled files."""
    op.create_table(
        "seen_files",
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("mtime_ns", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seen_at", _timestamp(), nullable=False),
    )


def _add_labels() -> None:
    """2 -> 3: labels."""
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


def _add_image_evicted() -> None:
    """3 -> 4: samples remember whether the disk quota evicted their image."""
    op.execute("ALTER TABLE samples ADD COLUMN image_evicted BOOLEAN NOT NULL DEFAULT 0")
    op.create_index("ix_samples_image_evicted", "samples", ["image_evicted"])


def _add_split_key() -> None:
    """4 -> 5: samples may carry the key that decides their side of the holdout split."""
    op.add_column("samples", sa.Column("split_key", sa.String(128), nullable=True))


def _add_template() -> None:
    """5 -> 6: samples remember the golden template they were compared with."""
    op.add_column("samples", sa.Column("template_id", sa.String(64), nullable=True))
    op.add_column("samples", sa.Column("template_sha256", sa.String(64), nullable=True))
    op.create_index("ix_samples_template_sha256", "samples", ["template_sha256"])


_BUFFER_STEPS: dict[int, Callable[[], None]] = {
    1: _add_seen_files,
    2: _add_labels,
    3: _add_image_evicted,
    4: _add_split_key,
    5: _add_template,
}
"""from-version -> the old step that brought a buffer to from-version + 1, as the buffer ran it."""


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


def upgrade() -> None:
    bind = op.get_bind()
    user_version = int(bind.exec_driver_sql("PRAGMA user_version").scalar_one())
    if user_version > LAST_USER_VERSION:
        raise RuntimeError(f"buffer user_version {user_version} is not one edge/migrations starts from")
    existing = set(sa.inspect(bind).get_table_names())
    if "samples" not in existing:
        _create_buffer_v1()
        user_version = 1
    elif user_version == 0:
        # The old buffer ran create_all of its then-newest tables and set user_version after it: a crash between
        # the two left today's tables at version 0.
        user_version = LAST_USER_VERSION
    for step in range(max(user_version, 1), LAST_USER_VERSION):
        _BUFFER_STEPS[step]()
    for table, create in (
        ("training_runs", _create_training_runs),
        ("executed_commands", _create_executed_commands),
        ("outbox_transfers", _create_outbox_transfers),
    ):
        if table not in existing:
            create()
    op.execute(f"PRAGMA user_version = {LOCKED_USER_VERSION}")


def downgrade() -> None:
    raise NotImplementedError("the baseline is the oldest schema there is: restore a backup to go further back")
