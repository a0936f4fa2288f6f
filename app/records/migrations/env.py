"""Alembic's environment: runs the migrations on the URL given in the config's attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app.records.db import WRITE, make_engine
from app.records.models import Base

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database URL: expected alembic_config(url) from app.records.migrate, "
            "or sqlalchemy.url in the Alembic configuration"
        )
    return str(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(_url())
    try:
        # A write transaction from the start (BEGIN IMMEDIATE on SQLite): a migration that
        # began by reading would fail at once with "database is locked" if another
        # connection (a replaying spool, say) wrote in between.
        with engine.execution_options(**{WRITE: True}).connect() as conn:
            _run(conn)
    finally:
        engine.dispose()
