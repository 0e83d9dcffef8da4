"""The models the hub has broadcast, as rows (``published_models``) rather than file names.

The publisher used to find what it may send again by parsing ``published/m-{name}-{version}.tar`` at start. A hub
upgraded here starts with no rows; at its first start it publishes the newest version of each line once more
(``HubService.queue_unpublished``), which edges that have it ignore, and from then on the rows say what was sent.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Checked first: on SQLite each schema statement commits on its own, so an interrupted run may have done one.
    inspector = sa.inspect(op.get_bind())
    if "published_models" in inspector.get_table_names():
        if "ix_published_models_model_name" not in {i["name"] for i in inspector.get_indexes("published_models")}:
            op.create_index("ix_published_models_model_name", "published_models", ["model_name"])
        return
    op.create_table(
        "published_models",
        sa.Column("transfer_id", sa.String(96), primary_key=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact", sa.String(4096), nullable=False),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_published_models_model_name", "published_models", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_published_models_model_name", table_name="published_models")
    op.drop_table("published_models")
