"""The hub's database and its one owner: opened once per process, upgraded by Alembic before anything reads it.

Every hub table is on ``hub.tables.HubBase``; its schema changes only through the revisions in ``hub/migrations``
(SQLite by default, PostgreSQL by ``database_url``). ``open_hub_database`` is how the hub, its CLI commands and the
demo get an engine: a file from before the migrations is upgraded in place, a file from a newer fedinspect is
refused rather than guessed at. The registry and the rounds use the engine they are given and create nothing.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from runtime.db import sqlite_engine
from runtime.migrations import DatabaseSchemaError, MigrationChain, schema_revision
from schemas.config import HubConfig

HUB_MIGRATIONS = MigrationChain(package="hub", what="hub database")

HubDatabaseError = DatabaseSchemaError
"""The hub's database cannot be used by this fedinspect; the message names the database and what to do."""

__all__ = [
    "HUB_MIGRATIONS",
    "HubDatabaseError",
    "head_revision",
    "hub_database_engine",
    "open_hub_database",
    "schema_revision",
    "upgrade_hub_database",
]


def head_revision() -> str:
    """The newest schema revision of the hub database this fedinspect knows."""
    return HUB_MIGRATIONS.head()


def upgrade_hub_database(engine: Engine) -> str:
    """Bring the hub database to the newest revision (refusing one a newer release wrote); returns it."""
    return HUB_MIGRATIONS.upgrade(engine)


def hub_database_engine(config: HubConfig) -> Engine:
    """The hub's engine (``database_url``, or ``hub.db`` in ``data_dir``) as it is: not upgraded."""
    if config.database_url:
        return create_engine(config.database_url, pool_pre_ping=True)
    return sqlite_engine(config.data_dir / "hub.db")


def open_hub_database(config: HubConfig) -> Engine:
    """The hub's engine, upgraded to the newest schema: how every hub process gets its database."""
    engine = hub_database_engine(config)
    upgrade_hub_database(engine)
    return engine
