"""The hub's tables as hubs created them before migrations (``create_all``): made where they are missing.

A database from before this chain has some or all of these tables and no ``alembic_version``; it is upgraded in
place: what exists is kept as it is (its rows untouched), what is missing is created. A new database gets all four.

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


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "model_versions" not in existing:
        op.create_table(
            "model_versions",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("version", sa.Integer(), primary_key=True),
            sa.Column("parent", sa.Integer(), nullable=True),
            sa.Column("round_id", sa.String(64), nullable=True),
            sa.Column("strategy", sa.String(32), nullable=True),
            sa.Column("participants_json", sa.Text(), nullable=False),
            sa.Column("num_examples", sa.Integer(), nullable=False),
            sa.Column("metrics_json", sa.Text(), nullable=False),
            sa.Column("weights_sha256", sa.String(64), nullable=False),
            sa.Column("manifest_json", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
    if "rounds" not in existing:
        op.create_table(
            "rounds",
            sa.Column("round_id", sa.String(64), primary_key=True),
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("base_version", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("opened_at", sa.DateTime(), nullable=False),
            sa.Column("deadline", sa.DateTime(), nullable=False),
            sa.Column("min_updates", sa.Integer(), nullable=False),
            sa.Column("strategy", sa.String(32), nullable=False),
            sa.Column("training_json", sa.Text(), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("new_version", sa.Integer(), nullable=True),
            sa.Column("closed_at", sa.DateTime(), nullable=True),
        )
        op.create_index("ix_rounds_model_name", "rounds", ["model_name"])
    if "round_updates" not in existing:
        op.create_table(
            "round_updates",
            sa.Column("round_id", sa.String(64), primary_key=True),
            sa.Column("edge_id", sa.String(64), primary_key=True),
            sa.Column("transfer_id", sa.String(64), nullable=False),
            sa.Column("num_examples", sa.Integer(), nullable=False),
            sa.Column("norm", sa.Double(), nullable=False),
            sa.Column("metrics_json", sa.Text(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("received_at", sa.DateTime(), nullable=False),
        )
    if "rejections" not in existing:
        op.create_table(
            "rejections",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("at", sa.DateTime(), nullable=False),
            sa.Column("edge_id", sa.String(64), nullable=False),
            sa.Column("round_id", sa.String(64), nullable=True),
            sa.Column("transfer_id", sa.String(64), nullable=True),
            sa.Column("reason", sa.String(32), nullable=False),
            sa.Column("detail", sa.Text(), nullable=False),
        )


def downgrade() -> None:
    raise NotImplementedError("the baseline is the oldest schema there is: restore a backup to go further back")
