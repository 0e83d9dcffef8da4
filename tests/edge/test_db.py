"""The edge buffer.db's migrations: a new file gets the schema of ``edge.tables``; a buffer edges wrote before
Alembic (a committed fixture, and an older one built by undoing the old steps) upgrades in place with every row."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from edge.buffer import EdgeBuffer
from edge.db import EDGE_MIGRATIONS, open_edge_database, upgrade_edge_database
from edge.tables import EdgeBase
from runtime.db import sqlite_engine
from runtime.exchange import ExchangeBase
from runtime.migrations import DatabaseSchemaError, schema_revision
from schemas.config import ReviewConfig
from tests.edge.test_buffer import TOPIC, record, result

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pre_migration" / "buffer.sqlite"
"""Written by the edge's code of commit b33a237, before Alembic (``tests/fixtures/pre_migration/README.md``)."""
TABLES = (
    "samples",
    "predictions",
    "review_items",
    "outbox",
    "seen_files",
    "labels",
    "training_runs",
    "executed_commands",
    "outbox_transfers",
)


def rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a fixed order, as the database returns it."""
    with engine.connect() as connection:
        return {table: sorted(tuple(r) for r in connection.execute(text(f"SELECT * FROM {table}"))) for table in TABLES}


def schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, [EdgeBase.metadata, ExchangeBase.metadata]))  # type: ignore[arg-type]


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def test_a_new_buffer_gets_exactly_the_schema_of_the_tables_module(tmp_path: Path) -> None:
    engine = open_edge_database(tmp_path / "buffer.db")
    assert schema_revision(engine) == EDGE_MIGRATIONS.head()
    assert schema_differences(engine) == []
    assert user_version(tmp_path / "buffer.db") == 7, "releases before the chain must refuse the file"


def test_a_buffer_from_before_the_migrations_upgrades_in_place_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    shutil.copyfile(FIXTURE, path)
    assert user_version(path) == 6
    engine = sqlite_engine(path)
    assert schema_revision(engine) is None
    before = rows(engine)
    assert [len(before[t]) for t in TABLES] == [4, 3, 2, 3, 2, 3, 2, 2, 1]

    assert upgrade_edge_database(engine) == EDGE_MIGRATIONS.head()

    assert rows(engine) == before
    assert schema_differences(engine) == []
    assert user_version(path) == 7
    # The stores read what the old code wrote and go on from there.
    buffer = EdgeBuffer(engine, tmp_path / "images")
    assert (buffer.samples.count(), buffer.samples.review_backlog(), buffer.outbox.backlog()) == (4, 0, 2)
    assert sorted(s.verdict for s in buffer.labels.labeled_samples()) == ["defective", "defective", "good"]
    assert buffer.labels.labeled_count() == 3
    record(buffer, b"new image", result(0.2), source="http", review=ReviewConfig(), event_topic=TOPIC)
    assert buffer.samples.count() == 5
    assert upgrade_edge_database(engine) == EDGE_MIGRATIONS.head(), "a second run changes nothing"


def test_an_older_buffer_runs_the_old_steps_it_lacks_keeping_its_rows(tmp_path: Path) -> None:
    """A version-1 buffer (samples, predictions, review items, outbox) gets seen files, labels, eviction, split
    keys and templates, as the buffer's own steps gave them, and then the tables of the other stores."""
    path = tmp_path / "buffer.db"
    shutil.copyfile(FIXTURE, path)
    with sqlite3.connect(path) as connection:
        for table in ("seen_files", "labels", "training_runs", "executed_commands", "outbox_transfers"):
            connection.execute(f"DROP TABLE {table}")
        for index in ("ix_samples_image_evicted", "ix_samples_template_sha256"):
            connection.execute(f"DROP INDEX {index}")
        for column in ("image_evicted", "split_key", "template_id", "template_sha256"):
            connection.execute(f"ALTER TABLE samples DROP COLUMN {column}")
        connection.execute("PRAGMA user_version = 1")
        samples = sorted(connection.execute("SELECT * FROM samples").fetchall())
    engine = open_edge_database(path)
    assert schema_differences(engine) == []
    with engine.connect() as connection:
        migrated = sorted(connection.execute(text("SELECT * FROM samples")).fetchall())
        assert [tuple(r)[:7] for r in migrated] == samples
        assert {tuple(r)[7:] for r in migrated} == {(0, None, None, None)}, "evicted no, no key, no template"
        assert connection.execute(text("SELECT count(*) FROM labels")).scalar_one() == 0
    assert EdgeBuffer(engine, tmp_path / "images").outbox.backlog() == 2


def _interrupted_new_buffer(connection: sqlite3.Connection) -> None:
    """The first start of a new buffer died after creating samples: SQLite committed that table alone."""
    for table in TABLES:
        connection.execute(f"DROP TABLE {table}")
    connection.execute(
        "CREATE TABLE samples (sample_id VARCHAR(64) NOT NULL PRIMARY KEY, sha256 VARCHAR(64) NOT NULL, source "
        "VARCHAR(64) NOT NULL, captured_at DATETIME NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
        "size_bytes INTEGER NOT NULL)"
    )
    connection.execute("CREATE INDEX ix_samples_sha256 ON samples (sha256)")
    connection.execute("PRAGMA user_version = 0")


def _interrupted_old_step(connection: sqlite3.Connection) -> None:
    """A version-3 buffer whose upgrade died after adding image_evicted, before it recorded any step."""
    connection.execute("DROP INDEX ix_samples_template_sha256")
    for column in ("split_key", "template_id", "template_sha256"):
        connection.execute(f"ALTER TABLE samples DROP COLUMN {column}")
    connection.execute("PRAGMA user_version = 3")


def _interrupted_before_the_record(connection: sqlite3.Connection) -> None:
    """Everything done and user_version 7 written, but the process died before alembic_version was."""
    connection.execute("PRAGMA user_version = 7")


@pytest.mark.parametrize(
    "interrupt",
    [_interrupted_new_buffer, _interrupted_old_step, _interrupted_before_the_record],
    ids=lambda f: f.__name__,
)
def test_an_upgrade_a_crash_interrupted_is_finished_at_the_next_start(tmp_path: Path, interrupt: Any) -> None:
    """SQLite commits each schema statement on its own: the next start must do exactly what is left."""
    path = tmp_path / "buffer.db"
    shutil.copyfile(FIXTURE, path)
    with sqlite3.connect(path) as connection:
        interrupt(connection)
        samples_before = sorted(tuple(r)[:7] for r in connection.execute("SELECT * FROM samples"))
    engine = open_edge_database(path)
    assert schema_revision(engine) == EDGE_MIGRATIONS.head()
    assert schema_differences(engine) == []
    assert user_version(path) == 7
    with engine.connect() as connection:
        assert sorted(tuple(r)[:7] for r in connection.execute(text("SELECT * FROM samples"))) == samples_before


def test_a_buffer_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    open_edge_database(path).dispose()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(DatabaseSchemaError, match=r"edge buffer .*buffer.db is at schema revision '9999'"):
        open_edge_database(path)
    unmanaged = tmp_path / "unmanaged.db"
    with sqlite3.connect(unmanaged) as connection:
        connection.execute("PRAGMA user_version = 8")
    with pytest.raises(DatabaseSchemaError, match=r"schema version 8 but no migration record"):
        open_edge_database(unmanaged)
