"""Alembic migration chains for the databases fedinspect's processes own: the hub's database and the edge's buffer.db.

Each owner keeps its revisions in a ``migrations`` folder of its package (an ``env.py`` calling ``run_migrations``
with its metadata, and ``versions/``) and upgrades through one ``MigrationChain`` before anything reads the
database. Online only: a plant upgrades by starting the process (or ``fedinspect hub migrate``), never from a
generated SQL script, so a revision may read rows and decide in Python.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData

from schemas.errors import FedinspectError

log = logging.getLogger(__name__)


class DatabaseSchemaError(FedinspectError):
    """A database cannot be used by this fedinspect (e.g. written by a newer release); the message names it."""


def database_name(engine: Engine) -> str:
    """The engine's URL without its password, for messages and logs."""
    return engine.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class MigrationChain:
    """The revisions in ``<package>/migrations`` and how to bring a database to the newest of them."""

    package: str
    """The owning package, e.g. ``hub``; its revisions are in ``<package>/migrations/versions``."""
    what: str
    """The database in words, for messages: "hub database", "edge buffer"."""

    def config(self, connection: Connection | None = None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(files(self.package) / "migrations"))
        config.attributes["connection"] = connection
        return config

    def script(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self.config())

    def head(self) -> str:
        """The newest revision this fedinspect knows."""
        head = self.script().get_current_head()
        assert head is not None, f"{self.package}/migrations has no revision"
        return head

    def upgrade(self, engine: Engine) -> str:
        """Bring the database to the newest revision (a no-op when it is there); returns that revision.

        Raises ``DatabaseSchemaError`` when the database is at a revision this fedinspect does not know (written
        by a newer release): downgrading software must not silently run on a schema it cannot read."""
        script = self.script()
        head = script.get_current_head()
        assert head is not None, f"{self.package}/migrations has no revision"
        before = schema_revision(engine)
        if before is not None and not any(known.revision == before for known in script.walk_revisions()):
            raise DatabaseSchemaError(
                f"{self.what} {database_name(engine)} is at schema revision {before!r}, newer than this fedinspect "
                f"knows (newest {head!r}): it was written by a later release; run that release, or restore a backup "
                "taken before the upgrade"
            )
        with engine.begin() as connection:
            command.upgrade(self.config(connection), "head")
        if before != head:
            log.info(
                "database upgraded",
                extra={"database": database_name(engine), "from_revision": before, "to_revision": head},
            )
        return head


def schema_revision(engine: Engine) -> str | None:
    """The revision a database is at; None for an empty database or one from before the migrations."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def run_migrations(target_metadata: MetaData | Sequence[MetaData]) -> None:
    """The body of a chain's ``env.py``: run the revisions on the connection ``MigrationChain.upgrade`` opened."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("fedinspect's migrations run on a connection from MigrationChain.upgrade, not offline")
    # render_as_batch: SQLite alters a table by copying it, which batch mode does for the revisions that need it.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
