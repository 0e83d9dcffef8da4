"""A throwaway PostgreSQL server for the tests (the hub's registry and rounds run on it by URL).

Uses the Debian/Ubuntu server binaries (``apt-get install postgresql``; .ci/run installs them): ``initdb`` a cluster in
a temporary directory with trust authentication, start it on a free loopback port, hand out one fresh database per
test, stop it at the end. Under root the server runs as the ``postgres`` user, as PostgreSQL requires.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from fedinspect.devbroker import free_port


def find_postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server bin directory (with initdb and pg_ctl), or None."""
    versions = Path("/usr/lib/postgresql")
    found = sorted(versions.glob("*/bin/initdb"), key=lambda p: int(p.parts[4])) if versions.is_dir() else []
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        # Not under pytest's temp dir: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="fedinspect-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, stdin: str | None = None) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, input=stdin)
        if completed.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {completed.stderr.strip()[-2000:]}")

    def start(self) -> PostgresServer:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def load_sql(self, database_url: str, script: Path) -> None:
        """Run a SQL script (a ``pg_dump`` file) with psql into the database of ``database_url``, stopping at the
        first error."""
        database = database_url.rsplit("/", 1)[1]
        # On stdin: under root psql runs as postgres, which may not read files under the checkout.
        self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1",
            "-q", stdin=script.read_text(encoding="utf-8"),
        )  # fmt: skip

    def new_database(self) -> str:
        """Create an empty database; its SQLAlchemy URL."""
        from sqlalchemy import create_engine, text

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)
