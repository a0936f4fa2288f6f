"""Alembic, driven from code: ``upgrade(url)``, ``current_revision(url)``, ``check_schema``.

No ``alembic.ini``: the configuration is built here, pointing at the ``migrations`` folder
inside the package (shipped as package data), so ``pcb-inspect db upgrade`` works from an
installed wheel as well as from the repository.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from app.records.db import display_url, make_engine, sqlite_path
from app.records.errors import SchemaError

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "check_schema",
    "current_revision",
    "head_revision",
    "upgrade",
]

logger = logging.getLogger("pcb_inspect.records")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_UPGRADE_HINT = "run `pcb-inspect db upgrade` (with --url {url}) before starting the service"


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for this package's migrations (and ``url``, if given)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Set explicitly: Alembic >= 1.16 warns when it has to guess the separator.
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        # Passed as an attribute, not a main option: configparser would read a '%' in a
        # password as interpolation.
        cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    """The revision this version of the code expects (the newest migration)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migration found in {MIGRATIONS_DIR}"
    return head


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrates the database at ``url`` to ``revision``; returns the revision it is at.

    A SQLite database's folder is created if missing (a fresh data directory).
    """
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
    return current_revision(url)


def current_revision(url_or_engine: str | Engine) -> str | None:
    """The revision the database is at; ``None`` for a database never migrated."""
    if isinstance(url_or_engine, str):
        engine = make_engine(url_or_engine)
        try:
            return _current(engine)
        finally:
            engine.dispose()
    return _current(url_or_engine)


def _current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine, *, upgrade_empty: bool = False) -> str:
    """Checks, at startup, that the database is at :func:`head_revision`; returns it.

    Raises :class:`SchemaError` naming the URL, the expected and the found revision when the
    database is behind (or ahead: a newer version migrated it). With ``upgrade_empty``, a
    database with no tables at all (the embedded default on first start) is migrated instead:
    creating a schema loses nothing, while upgrading an existing one is left to the operator.
    """
    url = engine.url.render_as_string(hide_password=False)
    shown = display_url(engine.url)
    expected = head_revision()
    found = _current(engine)
    if found == expected:
        return found
    if found is None and upgrade_empty:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
        if not tables:
            logger.info("records database %s is empty: creating the schema", shown)
            engine.dispose()
            new = upgrade(url)
            assert new == expected, f"upgrade of {shown} ended at {new!r}, not {expected!r}"
            return expected
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if found is not None and found not in known:
        hint = (f"revision {found!r} is unknown to this version (a newer pcb-inspect migrated "
                "it?): run the version that did, or restore a matching backup")
    else:
        hint = _UPGRADE_HINT.format(url=shown)
    raise SchemaError(shown, expected, found, hint)
