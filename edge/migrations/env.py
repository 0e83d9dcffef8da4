"""Alembic's entry point for the edge buffer.db: run by ``edge.db.upgrade_edge_database`` on its connection."""

from __future__ import annotations

from edge.tables import EdgeBase
from runtime.exchange import ExchangeBase
from runtime.migrations import run_migrations

run_migrations([EdgeBase.metadata, ExchangeBase.metadata])
