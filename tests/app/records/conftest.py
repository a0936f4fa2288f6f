"""Real databases for the records tests: a SQLite file per test, and a PostgreSQL server.

The PostgreSQL server is Debian's ``postgresql`` package, started once per session through
:mod:`tests.helpers.postgresql` (which also runs it as root, and starts it again on another
port if its port was taken before it bound it); each test gets its own database, cloned from
a migrated template. The PostgreSQL tests skip, with the reason, where the server is not
installed.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.records import RecordStore, upgrade
from tests.helpers.postgresql import pg_ctl_or_skip, start_postgresql


@pytest.fixture(scope="session")
def postgresql_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A PostgreSQL server for the session (a pytest-postgresql ``PostgreSQLExecutor``)."""
    base, executable = pg_ctl_or_skip(tmp_path_factory.mktemp("postgresql"))
    # More clients than the default 100: the concurrency tests open many connections.
    executor = start_postgresql(executable, base, postgres_options="-c max_connections=200")
    try:
        yield executor
    finally:
        try:
            executor.stop()
        finally:
            # Belt and braces: a server left running would outlive the session.
            if executor.running():
                subprocess.run([str(executable), "stop", "-D", executor.datadir, "-m",
                                "immediate"], check=False, capture_output=True, timeout=60)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_database(postgresql_proc: object) -> Callable[[], str]:
    """Makes a fresh, migrated PostgreSQL database and returns its URL (cloned from a
    template migrated once per session).
    """
    from pytest_postgresql.janitor import DatabaseJanitor

    proc = postgresql_proc
    host, port, user = proc.host, proc.port, proc.user  # type: ignore[attr-defined]
    template = "pcb_records_template"

    def url(name: str) -> str:
        return f"postgresql+psycopg://{user}@{host}:{port}/{name}"

    DatabaseJanitor(user=user, host=host, port=port, dbname=template).init()
    upgrade(url(template))
    counter = itertools.count()

    def make() -> str:
        name = f"pcb_records_{next(counter)}"
        DatabaseJanitor(user=user, host=host, port=port, dbname=name,
                        template_dbname=template).init()
        return url(name)

    return make


@pytest.fixture
def pg_url(pg_database: Callable[[], str]) -> str:
    """A fresh, migrated PostgreSQL database."""
    return pg_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file."""
    url = f"sqlite:///{tmp_path / 'data' / 'records.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database of each kind."""
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def store(db_url: str) -> Iterator[RecordStore]:
    """A store on a fresh database of each kind."""
    s = RecordStore(db_url)
    try:
        yield s
    finally:
        s.close()
