"""SQLAlchemy engines for the local state both processes keep (SQLite in WAL mode by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event


def sqlite_engine(path: Path, *, synchronous: str = "NORMAL") -> Engine:
    """An engine on a SQLite file with WAL journaling, foreign keys on and a busy timeout.

    WAL + synchronous=NORMAL loses no committed row when the process dies (only the last commits on power loss);
    pass synchronous="FULL" where power loss must not lose them either.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
