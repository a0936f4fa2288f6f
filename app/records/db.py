"""Engines: one function that makes a correctly tuned engine for SQLite or PostgreSQL.

SQLite (the embedded default, ``<data_dir>/records.db``) is opened in WAL mode with
``synchronous=NORMAL``: readers never block the writer, and a commit is one append to the WAL
without an fsync, which survives a killed process (not a power cut of the host, where the last
commits can be lost; the issue's bar is ``kill -9``). Python's sqlite3 module is told not to
open transactions itself, so the store's own ``BEGIN`` (or ``BEGIN IMMEDIATE`` for writes) is
what runs: the driver's default starts transactions late and reads outside them.

PostgreSQL is any ``postgresql+psycopg://`` URL (the ``postgres`` extra installs psycopg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection

__all__ = [
    "DB_FILENAME",
    "WRITE",
    "default_url",
    "display_url",
    "make_engine",
    "sqlite_path",
]

DB_FILENAME = "records.db"
#: Execution option of the store's writing transactions: on SQLite they ``BEGIN IMMEDIATE``,
#: taking the write lock up front (waiting up to busy_timeout) instead of failing with
#: SQLITE_BUSY when a read-then-write transaction finds another writer got there first.
WRITE = "pcb_records_write"
#: How long a SQLite connection waits for another writer's lock before giving up (ms).
SQLITE_BUSY_TIMEOUT_MS = 5000
#: How long a PostgreSQL connection attempt may take (s): a database that does not answer
#: must turn into an error (and a spooled record), not a hung request.
PG_CONNECT_TIMEOUT_S = 5


def default_url(data_dir: Path) -> str:
    """The embedded default: SQLite file ``records.db`` in ``data_dir`` (absolute path)."""
    return f"sqlite:///{(Path(data_dir) / DB_FILENAME).resolve()}"


def display_url(url: str | URL) -> str:
    """The URL with its password masked, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL; ``None`` for other databases and in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url``, with the connection settings above. ``kwargs`` go to
    :func:`sqlalchemy.create_engine`.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        _tune_sqlite(engine)
        return engine
    if backend == "postgresql":
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        connect_args.update(kwargs.pop("connect_args", {}))
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(u, connect_args=connect_args, **kwargs)
    raise ValueError(
        f"unsupported database URL {display_url(u)!r}: expected sqlite:///PATH or "
        "postgresql+psycopg://USER:PASSWORD@HOST/DB"
    )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: the "begin" hook below issues BEGIN itself.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
