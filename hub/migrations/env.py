"""Alembic's entry point for the hub database: run by ``hub.db.upgrade_hub_database`` on a connection it opened.

Online only: a plant upgrades its database by starting the hub (or ``fedinspect hub migrate``), never from a
generated SQL script, so every revision may read rows and decide in Python.
"""

from __future__ import annotations

from alembic import context

from hub.tables import HubBase

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the hub's migrations run on a connection from hub.db.upgrade_hub_database, not offline")
# render_as_batch: SQLite alters a table by copying it, which batch mode does for the revisions that need it.
context.configure(connection=connection, target_metadata=HubBase.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
