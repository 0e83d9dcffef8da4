"""The hub database's migrations: a new database, and databases hubs wrote before the migrations (committed
fixtures: a SQLite file and a PostgreSQL dump), upgrade to the schema of ``hub.tables`` with every row intact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from hub.db import HubDatabaseError, head_revision, schema_revision, upgrade_hub_database
from hub.registry import ModelRegistry
from hub.rounds import RoundManager
from hub.strategies.fedavg import FedAvg
from hub.tables import HubBase
from hub.update_store import UpdateStore
from runtime.db import sqlite_engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pre_migration"
"""Written by the hub's code as of commit c25668c, before Alembic (``tests/fixtures/pre_migration/README.md``)."""
TABLES = ("model_versions", "rounds", "round_updates", "rejections")
OLD_ROW = ("pcb-detector-r0003", "plant-old")
"""The round update stored in the flat metrics shape of hubs before metrics_before was kept."""


def rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every hub table, in primary-key order, as the database returns it."""
    order = {"model_versions": "name, version", "rounds": "round_id", "round_updates": "round_id, edge_id"}
    with engine.connect() as connection:
        return {
            table: [
                tuple(r) for r in connection.execute(text(f"SELECT * FROM {table} ORDER BY {order.get(table, 'id')}"))
            ]
            for table in TABLES
        }


def schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), HubBase.metadata))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "postgresql":
        return create_engine(request.getfixturevalue("postgres_server").new_database())
    return sqlite_engine(tmp_path / "hub.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def pre_migration_database(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """A copy of the hub database written before the migrations, on SQLite or loaded from the dump into a real
    PostgreSQL."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        url = server.new_database()
        server.load_sql(url, FIXTURES / "hub-postgresql.sql")
        return create_engine(url)
    shutil.copyfile(FIXTURES / "hub.sqlite", tmp_path / "hub.db")
    return sqlite_engine(tmp_path / "hub.db")


def test_a_new_database_gets_exactly_the_schema_of_the_tables_module(empty_database: Engine) -> None:
    assert schema_revision(empty_database) is None
    assert upgrade_hub_database(empty_database) == head_revision()
    assert set(TABLES) <= set(inspect(empty_database).get_table_names())
    assert schema_differences(empty_database) == []
    assert schema_revision(empty_database) == head_revision()


def test_a_database_from_before_the_migrations_upgrades_in_place_with_every_row(
    pre_migration_database: Engine, tmp_path: Path
) -> None:
    engine = pre_migration_database
    assert schema_revision(engine) is None  # no alembic_version: what create_all left
    before = rows(engine)
    assert [len(before[t]) for t in TABLES] == [3, 3, 5, 3]

    upgrade_hub_database(engine)

    after = rows(engine)
    assert schema_revision(engine) == head_revision()
    assert schema_differences(engine) == []
    assert {t: after[t] for t in TABLES if t != "round_updates"} == {
        t: before[t] for t in TABLES if t != "round_updates"
    }
    metrics = 5  # position of metrics_json in round_updates
    for old, new in zip(before["round_updates"], after["round_updates"], strict=True):
        if old[:2] == OLD_ROW:
            assert json.loads(old[metrics]) == {"accuracy": 0.9}
            assert json.loads(new[metrics]) == {"before": {}, "after": {"accuracy": 0.9}}
            assert old[:metrics] + old[metrics + 1 :] == new[:metrics] + new[metrics + 1 :]
        else:
            assert new == old
    # The hub reads them as it wrote them: versions, rounds and updates, and the new rows go on from there.
    registry = ModelRegistry(engine, tmp_path / "artifacts")
    assert [v.manifest.version for v in registry.versions("pcb-detector")] == [0, 1, 2]
    assert registry.versions("pcb-detector")[1].participants == ["plant-a", "plant-b"]
    rounds = RoundManager(
        engine,
        registry,
        UpdateStore(tmp_path / "updates"),
        {"pcb-detector": FedAvg()},
        announce=lambda _body: None,
        on_published=lambda _version: None,
    )
    kept = next(u for u in rounds.round_updates(OLD_ROW[0]) if u.edge_id == OLD_ROW[1])
    assert (kept.metrics_before, kept.metrics_after) == ({}, {"accuracy": 0.9})
    assert rounds.round("pcb-detector-r0002")[1] == "deadline passed with 1 of 3 required updates"
    assert rounds.rejection_counts() == {"bad_signature": 1, "conflict": 2}
    assert upgrade_hub_database(engine) == head_revision() and rows(engine) == after  # a second run changes nothing


def test_a_database_with_only_the_registry_gets_the_round_tables(tmp_path: Path) -> None:
    """``fedinspect hub import`` before the first ``hub run`` created model_versions alone."""
    shutil.copyfile(FIXTURES / "hub.sqlite", tmp_path / "hub.db")
    engine = sqlite_engine(tmp_path / "hub.db")
    with engine.begin() as connection:
        for table in ("rounds", "round_updates", "rejections"):
            connection.execute(text(f"DROP TABLE {table}"))
    versions = rows_of(engine, "model_versions")
    upgrade_hub_database(engine)
    assert schema_differences(engine) == []
    assert rows_of(engine, "model_versions") == versions
    assert rows_of(engine, "rounds") == []


def rows_of(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text(f"SELECT * FROM {table}"))]


def test_a_database_from_a_newer_release_is_refused_with_its_revision(empty_database: Engine) -> None:
    upgrade_hub_database(empty_database)
    with empty_database.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(HubDatabaseError, match=r"schema revision '9999', newer than this fedinspect knows"):
        upgrade_hub_database(empty_database)


def test_an_upgrade_to_0003_interrupted_after_its_table_is_finished(tmp_path: Path) -> None:
    """SQLite commits CREATE TABLE on its own: a hub that died before the index and the record upgrades again."""
    engine = sqlite_engine(tmp_path / "hub.db")
    upgrade_hub_database(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_published_models_model_name"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    assert upgrade_hub_database(engine) == head_revision()
    assert schema_differences(engine) == []
