"""Alembic's entry point for the hub database: run by ``hub.db.upgrade_hub_database`` on a connection it opened."""

from __future__ import annotations

from hub.tables import HubBase
from runtime.migrations import run_migrations

run_migrations(HubBase.metadata)
