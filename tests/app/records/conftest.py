"""Real databases for the records tests: a SQLite file per test, and a PostgreSQL server.

The PostgreSQL server is Debian's ``postgresql`` package, started once per session with
pytest-postgresql's ``PostgreSQLExecutor`` (``pg_ctl``); each test gets its own database,
cloned from a migrated template. The PostgreSQL tests skip, with the reason, where the server
is not installed.

``pg_ctl`` refuses to run as root (CI containers run as root). pytest-postgresql has no option
for that (dbfixtures/pytest-postgresql#341, #455), and its own ``postgresql_proc`` puts the
data directory under pytest's temporary folder, which is private to root. So this file
overrides ``postgresql_proc``: as root, the data directory is a folder owned by ``postgres``
and ``pg_ctl`` runs through a two-line wrapper that switches to that user with ``runuser``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.records import RecordStore, upgrade

#: Overrides the search for pg_ctl (a path).
PG_CTL_ENV = "PCB_TEST_PG_CTL"
INSTALL_HINT = "install it with: apt-get install -y postgresql"


def find_pg_ctl() -> str | None:
    """pg_ctl from $PCB_TEST_PG_CTL, PATH, or the newest /usr/lib/postgresql/<ver>/bin."""
    if os.environ.get(PG_CTL_ENV):
        return os.environ[PG_CTL_ENV]
    found = shutil.which("pg_ctl")
    if found:
        return found
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(p) for p in m.group(1).split(".")) if m else (0,)

    return max(candidates, key=version) if candidates else None


@pytest.fixture(scope="session")
def postgresql_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A PostgreSQL server for the session (a pytest-postgresql ``PostgreSQLExecutor``)."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        pytest.skip(f"PostgreSQL server not installed (no pg_ctl on PATH or in "
                    f"/usr/lib/postgresql/*/bin); {INSTALL_HINT}")
    pytest.importorskip("pytest_postgresql", reason="pytest-postgresql is in the test extra")
    import port_for
    from pytest_postgresql.executors import PostgreSQLExecutor

    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(f"running as root and there is no 'postgres' user to run {pg_ctl} as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser (util-linux) is missing")
        base = Path(tempfile.mkdtemp(prefix="pcb-records-pg-"))
        os.chown(base, owner.pw_uid, owner.pw_gid)
        executable = base / "pg_ctl-as-postgres"
        # cd /: postgres may not read the current folder, and pg_ctl looks at it.
        executable.write_text(f'#!/bin/sh\ncd /\nexec {runuser} -u postgres -- "{pg_ctl}" "$@"\n')
        executable.chmod(0o755)
    else:
        base = tmp_path_factory.mktemp("postgresql")
        executable = Path(pg_ctl)
    executor = PostgreSQLExecutor(
        executable=str(executable), host="127.0.0.1", port=port_for.select_random(),
        datadir=str(base / "data"), unixsocketdir=str(base), logfile=str(base / "pg.log"),
        startparams="-w", dbname="pcb_records", user="postgres",
        # More clients than the default 100: the concurrency tests open many connections.
        postgres_options="-c max_connections=200",
    )
    executor.start()
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
