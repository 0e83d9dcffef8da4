"""The hub's database and its one owner: opened once per process, upgraded by Alembic before anything reads it.

Every hub table is on ``hub.tables.HubBase``; its schema changes only through the revisions in ``hub/migrations``
(SQLite by default, PostgreSQL by ``database_url``). ``open_hub_database`` is how the hub, its CLI commands and the
demo get an engine: a file from before the migrations is upgraded in place, a file from a newer fedinspect is
refused rather than guessed at. The registry and the rounds use the engine they are given and create nothing.
"""

from __future__ import annotations

import logging
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine

from runtime.db import sqlite_engine
from schemas.config import HubConfig
from schemas.errors import FedinspectError

log = logging.getLogger(__name__)


class HubDatabaseError(FedinspectError):
    """The hub's database cannot be used by this fedinspect; the message names the database and what to do."""


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("hub") / "migrations"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this fedinspect knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "hub/migrations has no revision"
    return head


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database or one from before the migrations."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_hub_database(engine: Engine) -> str:
    """Bring the database to the newest revision (a no-op when it is there); returns that revision.

    Raises ``HubDatabaseError`` when the database is at a revision this fedinspect does not know (written by a
    newer release): downgrading software must not silently run on a schema it cannot read."""
    script = ScriptDirectory.from_config(_alembic_config())
    before = schema_revision(engine)
    if before is not None and not any(r.revision == before for r in script.walk_revisions()):
        raise HubDatabaseError(
            f"hub database {engine.url.render_as_string(hide_password=True)} is at schema revision {before!r}, "
            f"newer than this fedinspect knows (newest {script.get_current_head()!r}): it was written by a later "
            "release; run that release, or restore a backup taken before the upgrade"
        )
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "head")
    after = script.get_current_head()
    assert after is not None, "hub/migrations has no revision"
    if before != after:
        log.info(
            "hub database upgraded",
            extra={
                "database": engine.url.render_as_string(hide_password=True),
                "from_revision": before,
                "to_revision": after,
            },
        )
    return after


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
