"""The edge's buffer.db and its one owner: opened once per agent, upgraded by Alembic before any store reads it.

Every table in the file is declared in ``edge.tables`` (and ``runtime.exchange`` for the transfer outbox) and
changes only through the revisions in ``edge/migrations``. A buffer from before the chain (``user_version`` 1-6,
no ``alembic_version``) is upgraded in place, also after an upgrade a crash interrupted; one from a newer
fedinspect is refused, naming the file.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from runtime.db import sqlite_engine
from runtime.migrations import DatabaseSchemaError, MigrationChain, schema_revision

EDGE_MIGRATIONS = MigrationChain(package="edge", what="edge buffer")

UPGRADE_USER_VERSION = 7
"""The ``user_version`` the first revision writes (``edge/migrations/versions/0001_baseline.py``). A file at 7 without
a migration record is one whose first upgrade was interrupted: it is upgraded again. Above 7 without a record, a
newer release wrote it."""


def upgrade_edge_database(engine: Engine) -> str:
    """Bring buffer.db to the newest revision; returns it. ``DatabaseSchemaError`` for a file a newer release wrote."""
    if schema_revision(engine) is None:
        with engine.connect() as connection:
            user_version = int(connection.execute(text("PRAGMA user_version")).scalar_one())
        if user_version > UPGRADE_USER_VERSION:
            raise DatabaseSchemaError(
                f"edge buffer {engine.url.database} has schema version {user_version} but no migration record: it was "
                "written by a newer fedinspect; run that release, or restore a backup taken before the upgrade"
            )
    return EDGE_MIGRATIONS.upgrade(engine)


def open_edge_database(path: Path) -> Engine:
    """The engine on buffer.db at ``path`` (SQLite, WAL), upgraded to the newest schema."""
    engine = sqlite_engine(path)
    upgrade_edge_database(engine)
    return engine
