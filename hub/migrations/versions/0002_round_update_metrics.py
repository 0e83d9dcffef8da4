"""Round-update metrics always as ``{"before": ..., "after": ...}``.

Hubs before ``metrics_before`` was kept stored an update's metrics as one flat object (the metrics after
training); the rounds module patched such rows on every read. They are rewritten once here, their metrics kept as
``after`` with an empty ``before``, and the read no longer guesses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

round_updates = sa.table(
    "round_updates",
    sa.column("round_id", sa.String()),
    sa.column("edge_id", sa.String()),
    sa.column("metrics_json", sa.Text()),
)


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(round_updates.c.round_id, round_updates.c.edge_id, round_updates.c.metrics_json))
    for round_id, edge_id, metrics_json in rows.all():
        metrics = json.loads(str(metrics_json))
        if isinstance(metrics, dict) and set(metrics) == {"before", "after"}:
            continue
        bind.execute(
            round_updates.update()
            .where(round_updates.c.round_id == round_id, round_updates.c.edge_id == edge_id)
            .values(metrics_json=json.dumps({"before": {}, "after": metrics}))
        )


def downgrade() -> None:
    pass  # the nested shape is what the older code wrote too, for every row it wrote after metrics_before
